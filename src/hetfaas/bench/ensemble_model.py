"""The compute of ``hetfaas bench ensemble``: data, preprocessing, the members, the vote.

Pure functions of their arguments (seeded), with no hetfaas in them, so that the pipeline's
stages and the single-process baseline run the same code:

- :func:`load_data`: scikit-learn's digits (8x8, a fixed 80/20 split by a seeded
  permutation, as ``bench elastic-train``) or a generated set of larger images;
- :func:`batch_plan` and :func:`preprocess`: one batch of an epoch (the shard of the training
  set the batch draws), upsampled, augmented (random rotation and shift), normalised;
- :func:`init_member` and :func:`train_member`: a member's state (an MLP's weights, its Adam
  moments, the fixed bag of examples it learns from) and its training on one batch;
- :func:`predict` and :func:`soft_vote`: each member's class probabilities on the test set,
  and their mean.

A member's state is plain tensors and numbers (it travels through the data plane on every
call of a stateful stage). It keeps batches that arrive out of order until the ones before
them came (``pending``), so a member sees the batches in the same order however the stream's
preprocessing calls finish, and the weights equal those of the same training in one process.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np

SPLIT_SEED = 0  # the fixed 80/20 split (the permutation of bench elastic-train)
TRAIN_FRACTION = 0.8
DIGITS_SIDE = 8
DIGITS_MAX = 16.0  # digits' pixels are counts 0..16
SYNTHETIC_NOISE = 0.3  # the noise of generated images: enough that classes overlap a little


@dataclass(frozen=True)
class DataSpec:
    """Which data set: ``digits`` (1,797 images of 8x8) or ``synthetic`` (``samples`` images
    of ``side`` x ``side``, ten classes, made from ``seed``)."""

    name: str = "digits"
    samples: int = 0
    side: int = DIGITS_SIDE
    seed: int = 0


@dataclass(frozen=True)
class PrepSpec:
    """How a batch is preprocessed: upsampled by ``upsample`` (linear interpolation), then,
    with probability ``p`` per image, rotated by up to ``rotate_deg`` and shifted by up to
    ``shift_px`` pixels (linear interpolation); normalised by the training set's mean and
    standard deviation. ``augment=False``: upsampled and normalised only (as the test set)."""

    upsample: int = 2
    rotate_deg: float = 10.0
    shift_px: float = 1.0
    p: float = 0.7
    augment: bool = True


class Data(NamedTuple):
    """Images (n, side, side) float32 scaled to [0, 1] and labels int64, train and test."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int


class BatchSpec(NamedTuple):
    """One batch of the stream: the ``seq``-th of the run, the ``index``-th of its epoch."""

    data: DataSpec
    prep: PrepSpec
    seed: int
    epoch: int
    index: int
    seq: int
    size: int


class Batch(NamedTuple):
    """A preprocessed batch: features (B, D) float32, labels and example ids (B,) int64."""

    seq: int
    x: np.ndarray
    y: np.ndarray
    ids: np.ndarray


# ------------------------------------------------------------------------------ data


@functools.lru_cache(maxsize=4)
def load_data(spec: DataSpec) -> Data:
    """The data set of ``spec``, split 80/20 by a fixed permutation (cached per process)."""
    if spec.name == "digits":
        try:
            from sklearn.datasets import load_digits
        except ImportError as exc:
            raise ImportError(
                "the digits data set comes with scikit-learn: pip install 'hetfaas[pipeline]'"
            ) from exc

        digits = load_digits()
        x = (digits.images / DIGITS_MAX).astype(np.float32)
        y = digits.target.astype(np.int64)
    elif spec.name == "synthetic":
        x, y = make_synthetic(spec.samples, spec.side, spec.seed)
    else:
        raise ValueError(f"unknown data set {spec.name!r}; known: digits, synthetic")
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    n = int(TRAIN_FRACTION * len(y))
    tr, te = perm[:n], perm[n:]
    return Data(x[tr], y[tr], x[te], y[te], int(y.max()) + 1)


def make_synthetic(
    samples: int, side: int, seed: int = 0, classes: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """``samples`` images of ``side`` x ``side`` in [0, 1]: each class a smooth random
    pattern, each image its class's pattern shifted by up to a tenth of the side, scaled, and
    with noise added. A stand-in for a larger image set, for runs beyond digits."""
    from scipy import ndimage

    if samples < classes or side < 4:
        raise ValueError(f"a synthetic set needs samples >= {classes} and side >= 4")
    rng = np.random.default_rng([seed, 7])
    protos = ndimage.gaussian_filter(rng.random((classes, side, side)), (0, side / 8, side / 8))
    protos = (protos - protos.min((1, 2), keepdims=True)) / np.ptp(protos, (1, 2), keepdims=True)
    y = rng.integers(0, classes, samples)
    reach = max(1, side // 10)
    dx = rng.integers(-reach, reach + 1, (samples, 2))
    x = np.empty((samples, side, side), np.float32)
    for i in range(samples):
        x[i] = np.roll(protos[y[i]], tuple(dx[i]), axis=(0, 1))
    x *= rng.uniform(0.7, 1.0, (samples, 1, 1)).astype(np.float32)
    x += SYNTHETIC_NOISE * rng.standard_normal(x.shape, dtype=np.float32)
    return np.clip(x, 0.0, 1.0), y.astype(np.int64)


def batches_per_epoch(data: DataSpec, size: int) -> int:
    """Batches of ``size`` in an epoch (the last one may be short)."""
    return math.ceil(len(load_data(data).y_train) / size)


def batch_plan(
    data: DataSpec, prep: PrepSpec, seed: int, epochs: int, size: int
) -> list[BatchSpec]:
    """The stream of a run: every batch of every epoch, in order."""
    per = batches_per_epoch(data, size)
    return [
        BatchSpec(data, prep, seed, e, i, e * per + i, size)
        for e in range(epochs)
        for i in range(per)
    ]


@functools.lru_cache(maxsize=16)
def _epoch_order(data: DataSpec, seed: int, epoch: int) -> np.ndarray:
    n = len(load_data(data).y_train)
    return np.random.default_rng([seed, epoch, 1]).permutation(n)


@functools.lru_cache(maxsize=8)
def _norm(data: DataSpec, upsample: int) -> tuple[float, float]:
    """The mean and standard deviation of the upsampled training images."""
    x = _upsample(load_data(data).x_train, upsample)
    return float(x.mean()), float(x.std())


def _upsample(x: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return x
    from scipy import ndimage

    return ndimage.zoom(x, (1, factor, factor), order=1).astype(np.float32)


def augment(img: np.ndarray, rng: np.random.Generator, prep: PrepSpec) -> np.ndarray:
    """``img`` rotated and shifted at random (with probability ``prep.p``), else as it is."""
    if rng.random() >= prep.p:
        return img
    from scipy import ndimage

    angle = rng.uniform(-prep.rotate_deg, prep.rotate_deg)
    out = ndimage.rotate(img, angle, reshape=False, order=1, mode="constant")
    shift = rng.uniform(-prep.shift_px, prep.shift_px, 2)
    return ndimage.shift(out, shift, order=1, mode="constant")


def preprocess(spec: BatchSpec, member: MemberSpec | None = None) -> Batch:
    """Batch ``spec``: its examples (its shard of the epoch's order), upsampled, augmented
    and normalised, flattened. Each example's augmentation is drawn from the run's seed, the
    epoch and the example, so it does not depend on which others are in the batch.

    ``member``: only the examples that member learns from (its bag), for a private stream;
    the member's training is then the same as on the whole batch."""
    d = load_data(spec.data)
    order = _epoch_order(spec.data, spec.seed, spec.epoch)
    ids = order[spec.index * spec.size : (spec.index + 1) * spec.size]
    if member is not None:
        bag = bag_mask(member.seed, member.bag, len(d.y_train))
        if bag is not None:
            ids = ids[bag[ids]]
    x = _upsample(d.x_train[ids], spec.prep.upsample)
    if spec.prep.augment:
        x = np.stack(
            [
                augment(img, np.random.default_rng([spec.seed, spec.epoch, int(i), 2]), spec.prep)
                for img, i in zip(x, ids, strict=True)
            ]
        ).reshape(x.shape)
    mean, std = _norm(spec.data, spec.prep.upsample)
    x = ((x - mean) / std).astype(np.float32).reshape(len(ids), -1)
    return Batch(spec.seq, x, d.y_train[ids], ids.astype(np.int64))


def test_set(data: DataSpec, prep: PrepSpec) -> tuple[np.ndarray, np.ndarray]:
    """The test features (upsampled and normalised as training batches, not augmented) and
    labels."""
    d = load_data(data)
    mean, std = _norm(data, prep.upsample)
    x = (_upsample(d.x_test, prep.upsample) - mean) / std
    return x.astype(np.float32).reshape(len(d.y_test), -1), d.y_test


# ------------------------------------------------------------------------------ members


@dataclass(frozen=True)
class MemberSpec:
    """One member: an MLP of ``depth`` hidden layers of ``width`` (ReLU), trained by Adam.

    What sets it apart from the others on its side of the shared stream: its seed (weights and
    bag) and ``bag``, the fraction of the training examples it learns from (a fixed subset,
    drawn from its seed: subagging). ``steps``: the Adam steps it takes on each batch (a fast
    member given more work); ``device``: ``cpu`` or ``cuda``.
    """

    name: str
    width: int
    depth: int = 1
    seed: int = 0
    lr: float = 3e-3
    bag: float = 1.0
    steps: int = 1
    device: str = "cpu"

    def with_(self, **changes: Any) -> MemberSpec:
        """A copy with ``changes``."""
        return replace(self, **changes)


ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def bag_mask(seed: int, bag: float, n_train: int) -> np.ndarray | None:
    """The training examples a member of ``seed`` learns from (bool, None: all of them)."""
    if bag >= 1.0:
        return None
    return np.random.default_rng([seed, 3]).random(n_train) < bag


def init_member(spec: MemberSpec, in_features: int, classes: int, n_train: int) -> dict[str, Any]:
    """A member's initial state: weights (as ``torch.nn.Linear`` initialises them), zero Adam
    moments, its bag, its place in the stream (``next``) and the batches it holds back."""
    import torch

    g = torch.Generator().manual_seed(spec.seed)
    params = []
    prev = in_features
    for out in [spec.width] * spec.depth + [classes]:
        bound = 1.0 / math.sqrt(prev)
        params.append((torch.rand(out, prev, generator=g) * 2 - 1) * bound)
        params.append((torch.rand(out, generator=g) * 2 - 1) * bound)
        prev = out
    bag = bag_mask(spec.seed, spec.bag, n_train)
    return {
        "spec": spec,
        "params": params,
        "m": [torch.zeros_like(p) for p in params],
        "v": [torch.zeros_like(p) for p in params],
        "t": 0,
        "bag": None if bag is None else torch.from_numpy(bag),
        "next": 0,
        "pending": {},
        "loss": 0.0,
        "examples": 0,
    }


def forward(params: Sequence[Any], x: Any) -> Any:
    """Logits of the MLP ``params`` (weights and biases, alternating) on ``x``."""
    import torch

    h = x
    last = len(params) // 2 - 1
    for i in range(0, len(params), 2):
        h = torch.nn.functional.linear(h, params[i], params[i + 1])
        if i // 2 < last:
            h = torch.relu(h)
    return h


def _device(name: str) -> Any:
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("a member asks for cuda, and torch sees no GPU here")
    if name == "cpu":
        torch.set_num_threads(1)  # one core per call, as the pool pins it
    return torch.device(name)


def _step(state: dict[str, Any], batch: Batch, dev: Any) -> None:
    """``spec.steps`` Adam steps of one member on one batch (the part of it in its bag)."""
    import torch

    spec: MemberSpec = state["spec"]
    x = torch.from_numpy(np.ascontiguousarray(batch.x))
    y = torch.from_numpy(np.ascontiguousarray(batch.y))
    if state["bag"] is not None:
        keep = state["bag"][torch.from_numpy(np.ascontiguousarray(batch.ids))].cpu()
        x, y = x[keep], y[keep]
    if len(y) == 0:
        return
    x, y = x.to(dev), y.to(dev)
    params = state["params"]
    b1, b2 = ADAM_BETAS
    for _ in range(spec.steps):
        for p in params:
            p.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(forward(params, x), y)
        grads = torch.autograd.grad(loss, params)
        state["t"] += 1
        t = state["t"]
        step = spec.lr * math.sqrt(1 - b2**t) / (1 - b1**t)
        with torch.no_grad():
            for p, g, m, v in zip(params, grads, state["m"], state["v"], strict=True):
                p.requires_grad_(False)
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                p.addcdiv_(m, v.sqrt().add_(ADAM_EPS), value=-step)
        state["loss"] += float(loss.detach()) * len(y)
        state["examples"] += len(y)


def _to(state: dict[str, Any], dev: Any) -> None:
    for key in ("params", "m", "v"):
        state[key] = [p.to(dev) for p in state[key]]
    if state["bag"] is not None:
        state["bag"] = state["bag"].to(dev)


def train_member(state: dict[str, Any], batch: Batch) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train one member on ``batch`` (the function of a stateful trainer stage).

    The batch is applied now if it is the next of the stream, else held back until the
    batches before it came, then applied in order: a member sees the stream in its order
    however the preprocessing calls finish. Returns the new state and a small summary (the
    batches this call applied and the seconds of its training steps)."""
    import time

    spec: MemberSpec = state["spec"]
    dev = _device(spec.device)
    if dev.type != "cpu":
        _to(state, dev)
    pending = state["pending"]
    pending[batch.seq] = batch
    applied = []
    t0 = time.perf_counter()
    while state["next"] in pending:
        _step(state, pending.pop(state["next"]), dev)
        applied.append(state["next"])
        state["next"] += 1
    if dev.type != "cpu":
        import torch

        torch.cuda.synchronize(dev)
    summary = {
        "seq": batch.seq,
        "applied": applied,
        "held": len(pending),
        "train_s": time.perf_counter() - t0,
    }
    return state, summary


def step_seconds(
    specs: Sequence[MemberSpec], batch_spec: BatchSpec, repeats: int = 5
) -> list[float]:
    """The median time of one training step of each member (fresh, one step, all of the
    batch) on ``batch_spec``, on its device: what balancing the members goes by."""
    import statistics
    import time

    batch = preprocess(batch_spec)
    d = load_data(batch_spec.data)
    out = []
    for spec in specs:
        dev = _device(spec.device)
        state = init_member(spec.with_(steps=1, bag=1.0), batch.x.shape[1], d.classes, 1)
        _to(state, dev)
        times = []
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            _step(state, batch, dev)
            if dev.type != "cpu":
                import torch

                torch.cuda.synchronize(dev)
            if i:  # the first one warms up
                times.append(time.perf_counter() - t0)
        out.append(statistics.median(times))
    return out


def predict(state: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """The member's class probabilities on ``x`` (n, classes) float64."""
    import torch

    params = [p.detach().cpu() for p in state["params"]]
    with torch.no_grad():
        logits = forward(params, torch.from_numpy(np.ascontiguousarray(x)))
        return torch.softmax(logits.double(), 1).numpy()


def soft_vote(probs: Sequence[np.ndarray]) -> np.ndarray:
    """The ensemble's class probabilities: the members' mean."""
    return np.mean(np.stack(probs), axis=0)


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    """The fraction of ``y`` that ``probs`` ranks first."""
    return float((probs.argmax(1) == y).mean())


def train_single_process(
    plan: Sequence[BatchSpec], states: Sequence[dict[str, Any]]
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The same training with no hetfaas: each batch preprocessed once, in order, then every
    member trained on it (the baseline of the bench). Returns the final states and the
    seconds spent: ``preprocess_s`` and ``train_s`` (wall), ``preprocess_cpu_s``."""
    import time

    out = list(states)
    prep_s = train_s = prep_cpu = 0.0
    for spec in plan:
        t0, c0 = time.perf_counter(), time.process_time()
        batch = preprocess(spec)
        t1 = time.perf_counter()
        prep_s += t1 - t0
        prep_cpu += time.process_time() - c0
        out = [train_member(s, batch)[0] for s in out]
        train_s += time.perf_counter() - t1
    return out, {"preprocess_s": prep_s, "train_s": train_s, "preprocess_cpu_s": prep_cpu}
