"""Batched matrix multiplication as serverless calls with hetfaas.

The four ways of computing C = A @ B for A [bs, M, N] and B [bs, N, K] (fp32):

- ``call_singleCPU``: one call of ``bmm_single`` on one CPU;
- ``call_multiCPU``: ``bs`` parallel calls of ``mm_single``, one matrix each, then stacked;
- ``call_GPU``: one call of ``bmm_gpu`` holding one GPU;
- ``call_multiGPU``: the batch split in two halves, two parallel ``bmm_gpu`` calls (a whole GPU
  each with two or more GPUs, ``gpus=0.5`` each on the one device otherwise).

Each generates random inputs from a fixed seed, checks the result against ``torch.bmm``
computed here with ``torch.allclose(rtol=1e-4, atol=1e-4 * sqrt(N))`` and prints whether it
verified together with where the time went. The kernels themselves live in
``hetfaas.bench.kernels`` so that worker processes can import them (this folder is not a
package). Run ``python examples/batchMM.py`` for a small demo; ``hetfaas bench bmm`` runs the
full study and writes a report.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import hetfaas
from hetfaas.bench import bmm as study
from hetfaas.bench.kernels import bmm_gpu, bmm_single, mm_single, tolerances

Shape = tuple[int, int, int, int]
SEED = 0

__all__ = [
    "bmm_gpu",
    "bmm_single",
    "call_GPU",
    "call_multiCPU",
    "call_multiGPU",
    "call_singleCPU",
    "mm_single",
]


def _report(name: str, shape: Shape, repeat: int, trial: dict[str, Any]) -> dict[str, Any]:
    rtol, atol = tolerances(shape[2])
    out = {
        "function": name,
        "shape": list(shape),
        "repeat": repeat,
        "verified": bool(trial["verified"]),
        "max_abs_err": trial["max_abs_err"],
        "rtol": rtol,
        "atol": atol,
        "time_s": trial["time_s"],
        "timings": trial["calls"],
    }
    calls = trial["calls"]
    compute = max(c.get("compute_us", 0.0) for c in calls) / 1e6
    print(
        f"{name:<14} {study.shape_label(shape):<22} repeat={repeat:<5} "
        f"verified={out['verified']} (max|err|={trial['max_abs_err']:.2e}, rtol={rtol:g}, "
        f"atol={atol:.2e})  time={trial['time_s']:.4f} s  calls={len(calls)}  "
        f"longest compute={compute:.4f} s"
    )
    return out


def _skip(name: str, shape: Shape, reason: str) -> dict[str, Any]:
    print(f"{name:<14} {study.shape_label(shape):<22} skipped: {reason}")
    return {"function": name, "shape": list(shape), "skipped": True, "reason": reason}


def _inputs(shape: Shape) -> tuple[Any, Any, Any]:
    A, B = study.make_inputs(shape, SEED)
    return A, B, study.reference(A, B)


def call_singleCPU(ex: hetfaas.Executor, shape: Shape, repeat: int = 1000) -> dict[str, Any]:
    """One serverless ``bmm_single`` call on one CPU."""
    A, B, ref = _inputs(shape)
    return _report("call_singleCPU", shape, repeat, study.call_single_cpu(ex, A, B, repeat, ref))


def call_multiCPU(ex: hetfaas.Executor, shape: Shape, repeat: int = 1000) -> dict[str, Any]:
    """``bs`` parallel ``mm_single`` calls, one CPU each, stacked into C."""
    A, B, ref = _inputs(shape)
    return _report("call_multiCPU", shape, repeat, study.call_multi_cpu(ex, A, B, repeat, ref))


def call_GPU(ex: hetfaas.Executor, shape: Shape, repeat: int = 1000) -> dict[str, Any]:
    """One serverless ``bmm_gpu`` call on one GPU (skipped when the executor has none)."""
    if ex.capacity.gpus == 0:
        return _skip("call_GPU", shape, study.NO_GPU)
    A, B, ref = _inputs(shape)
    return _report("call_GPU", shape, repeat, study.call_gpu(ex, A, B, repeat, ref))


def call_multiGPU(ex: hetfaas.Executor, shape: Shape, repeat: int = 1000) -> dict[str, Any]:
    """Two parallel half-batch ``bmm_gpu`` calls (skipped when the executor has no GPU)."""
    if ex.capacity.gpus == 0:
        return _skip("call_multiGPU", shape, study.NO_GPU)
    A, B, ref = _inputs(shape)
    out = _report("call_multiGPU", shape, repeat, study.call_multi_gpu(ex, A, B, repeat, ref))
    out["gpus_per_call"] = study.multi_gpu_share(int(ex.capacity.gpus))
    return out


def main() -> int:
    shapes: list[Shape] = [(5, 100, 100, 100), (10, 100, 100, 100), (5, 200, 200, 200)]
    repeat = 10
    results = []
    with hetfaas.Executor("local") as ex:
        cap = ex.capacity
        print(f"executor: {cap.cpus} CPUs, {cap.gpus} GPUs {list(cap.gpu_names)}; warming up")
        slots = max(1, min(cap.cpus, cap.max_workers))
        ex.warmup(slots)
        # A worker's first calls import torch and load the kernels: take that cold start out
        # of the way (and show it) before anything is compared.
        t0 = time.perf_counter()
        A, B = study.make_inputs((1, 4, 4, 4), SEED)
        warm = [ex.options(cpus=1).submit(bmm_single, A, B, repeat=1) for _ in range(2 * slots)]
        for f in warm:
            f.result()
        print(f"cold start: {len(warm)} first calls took {time.perf_counter() - t0:.2f} s")
        for shape in shapes:
            A, B, ref = _inputs(shape)
            bare = study.bare_cpu(A, B, repeat, ref)
            print(
                f"{'bare metal':<14} {study.shape_label(shape):<22} repeat={repeat:<5} "
                f"verified={bare['verified']}  time={bare['time_s']:.4f} s"
            )
            results.append(call_singleCPU(ex, shape, repeat))
            results.append(call_multiCPU(ex, shape, repeat))
            results.append(call_GPU(ex, shape, repeat))
            results.append(call_multiGPU(ex, shape, repeat))
    bad = [r for r in results if not r.get("skipped") and not r["verified"]]
    print(f"{len(results) - len(bad)} of {len(results)} calls verified or skipped")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
