"""Small torch models for the real-mode tests (fast on a CPU)."""

import torch

WIDTHS = [16, 24, 32, 40, 48, 56]


def mlp(width: int):
    def factory():
        torch.manual_seed(width)
        return torch.nn.Sequential(
            torch.nn.Linear(8, width), torch.nn.ReLU(), torch.nn.Linear(width, 4)
        )

    return factory


def register_all(infer, store_dir=None, widths=WIDTHS):
    """Register one MLP per width as ``mlp-<i>``; weights in a file store when given."""
    from hetfaas.serving.functions import save_weights

    for i, w in enumerate(widths):
        weights = None
        if store_dir is not None:
            weights = (store_dir / f"mlp-{i}.pt").as_uri()
            save_weights(mlp(w)(), weights)
        infer.register(f"mlp-{i}", mlp(w), weights=weights)


def expected(i, batch, widths=WIDTHS):
    with torch.inference_mode():
        return mlp(widths[i])()(batch)
