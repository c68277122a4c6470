"""The model catalog: what each model weighs, how long it takes to load and to run.

The defaults are stand-ins of our choosing for common inference models on a data-centre GPU
(weights of ResNet-50, VGG-16, BERT-base, ... in fp32; inference of a batch of 8): loading is a
fixed 80 ms (allocating, building the module, launching the copy) plus the weights at 2 GB/s
(reading from the host's page cache and crossing PCIe with deserialisation), so a miss costs
10-40 times an inference, which is the regime the paper studies. ``profile()`` replaces them
with times measured on this machine (the GPU when there is one), and ``hetfaas bench inference
--profile`` prints them.

A working set of ``n`` models cycles through the families: model ``i`` is
``f"{family}-like-{i}"`` with its family's size and times.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..exceptions import ConfigurationError, UnknownModel

MB = 1_000_000
LOAD_FIXED_S = 0.08
LOAD_BYTES_PER_S = 2.0e9


@dataclass(frozen=True)
class Family:
    name: str
    size_bytes: int
    infer_s: float

    @property
    def load_s(self) -> float:
        return LOAD_FIXED_S + self.size_bytes / LOAD_BYTES_PER_S


FAMILIES: tuple[Family, ...] = (
    Family("resnet", 98 * MB, 0.007),
    Family("vgg", 528 * MB, 0.012),
    Family("bert", 420 * MB, 0.015),
    Family("densenet", 32 * MB, 0.011),
    Family("inception", 92 * MB, 0.009),
    Family("gpt2", 498 * MB, 0.022),
    Family("mobilenet", 14 * MB, 0.004),
)


@dataclass(frozen=True)
class MeasuredFamily(Family):
    """A family whose load time was measured (by ``profile``) rather than modelled."""

    measured_load: float = 0.0

    @property
    def load_s(self) -> float:
        return self.measured_load


@dataclass(frozen=True)
class ModelProfile:
    name: str
    size_bytes: int
    load_s: float
    infer_s: float


class Catalog:
    """An ordered list of model profiles; a model's index is its id in the scheduler."""

    def __init__(self, models: Sequence[ModelProfile]) -> None:
        if not models:
            raise ConfigurationError("a catalog needs at least one model")
        self.models = list(models)
        self._index = {m.name: i for i, m in enumerate(self.models)}
        if len(self._index) != len(self.models):
            raise ConfigurationError("model names in a catalog must be unique")
        for m in self.models:
            if m.size_bytes <= 0 or m.load_s < 0 or m.infer_s <= 0:
                raise ConfigurationError(f"model {m.name!r}: size and inference time must be > 0")

    def __len__(self) -> int:
        return len(self.models)

    def index(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            known = ", ".join(list(self._index)[:8])
            raise UnknownModel(f"unknown model {name!r}; known models include: {known}") from None

    @property
    def sizes(self) -> list[int]:
        return [m.size_bytes for m in self.models]

    @property
    def load_times(self) -> list[float]:
        return [m.load_s for m in self.models]

    @property
    def infer_times(self) -> list[float]:
        return [m.infer_s for m in self.models]


def default_catalog(n: int, families: Sequence[Family] = FAMILIES) -> Catalog:
    """A working set of ``n`` models cycling through ``families``."""
    if not isinstance(n, int) or n < 1:
        raise ConfigurationError(f"working set must be an int >= 1, not {n!r}")
    out = []
    for i in range(n):
        f = families[i % len(families)]
        out.append(ModelProfile(f"{f.name}-like-{i}", f.size_bytes, f.load_s, f.infer_s))
    return Catalog(out)


def profile(
    families: Sequence[Family] = FAMILIES, scale: float = 0.1, batch: int = 8, device: str = ""
) -> list[MeasuredFamily]:
    """Measure each family's load and inference time here, on ``device`` (GPU if any).

    A family is stood in for by an MLP of ``scale`` times its size (square layers of 1024
    wide); its state dict is saved to a file and timed as ``torch.load`` plus the copy to the
    device, and a batch through it is timed after a warm-up. Times are scaled back by
    ``1/scale`` (loading and fp32 inference grow with the bytes; fixed costs get scaled too, so
    small families come out pessimistic). Loading includes building the module, as a
    factory does. Returns the families with both times measured.
    """
    import torch

    if not 0 < scale <= 1:
        raise ConfigurationError(f"scale must be in (0, 1], not {scale!r}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    width = 1024
    out = []
    for fam in families:
        layers = max(1, round(fam.size_bytes * scale / (4 * width * width)))
        model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        with tempfile.NamedTemporaryFile(suffix=".pt", delete=False) as fh:
            fh.write(buf.getvalue())
            path = fh.name
        try:
            t0 = time.perf_counter()
            fresh = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
            fresh.load_state_dict(torch.load(path, map_location="cpu"))
            fresh.to(dev)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            load_s = time.perf_counter() - t0
        finally:
            os.unlink(path)
        x = torch.randn(batch, width, device=dev)
        with torch.inference_mode():
            fresh(x)
            t0 = time.perf_counter()
            for _ in range(3):
                fresh(x)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            infer_s = (time.perf_counter() - t0) / 3
        true_scale = layers * 4 * width * width / fam.size_bytes
        out.append(
            MeasuredFamily(fam.name, fam.size_bytes, infer_s / true_scale, load_s / true_scale)
        )
    return out
