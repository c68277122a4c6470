"""The bmm study: kernels, correctness checks, calls on a real local executor, the plan."""

from __future__ import annotations

import argparse
import importlib.util
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import hetfaas  # noqa: E402
from hetfaas.bench import bmm  # noqa: E402
from hetfaas.bench.kernels import (  # noqa: E402
    bmm_gpu,
    bmm_single,
    flops,
    mm_single,
    tolerances,
    verify,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "batchMM.py"
CUDA = torch.cuda.is_available()


def load_example():
    spec = importlib.util.spec_from_file_location("batchMM_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example():
    return load_example()


@pytest.fixture(scope="module")
def ex():
    with hetfaas.Executor("local") as executor:
        executor.warmup(max(1, min(executor.capacity.cpus, executor.capacity.max_workers)))
        yield executor


# ------------------------------------------------------------------ kernels


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 4, 5, 6), (2, 17, 9, 3)])
def test_bmm_single_matches_torch_bmm(shape):
    A, B = bmm.make_inputs(shape, seed=3)
    C = bmm_single(A, B, repeat=3)
    assert C.shape == (shape[0], shape[1], shape[3])
    assert torch.allclose(C, torch.bmm(A, B), rtol=1e-5, atol=1e-5)


def test_mm_single_matches_each_matrix():
    A, B = bmm.make_inputs((3, 7, 5, 4), seed=1)
    for i in range(3):
        c = mm_single(A[i], B[i], repeat=2)
        assert c.shape == (7, 4)
        assert torch.allclose(c, A[i] @ B[i], rtol=1e-5, atol=1e-5)


def test_kernels_reject_bad_input():
    A, B = bmm.make_inputs((2, 3, 4, 5))
    with pytest.raises(ValueError):
        bmm_single(A, B, repeat=0)
    with pytest.raises(ValueError):
        bmm_single(A, A, repeat=1)  # [2,3,4] @ [2,3,4]: inner dims differ
    with pytest.raises(ValueError):
        mm_single(A[0], B[0], repeat=True)
    with pytest.raises(ValueError):
        mm_single(A[0], A[0], repeat=1)


def test_inputs_are_seeded():
    A1, B1 = bmm.make_inputs((2, 3, 4, 5), seed=7)
    A2, B2 = bmm.make_inputs((2, 3, 4, 5), seed=7)
    A3, _ = bmm.make_inputs((2, 3, 4, 5), seed=8)
    assert torch.equal(A1, A2) and torch.equal(B1, B2)
    assert not torch.equal(A1, A3)
    assert A1.dtype == torch.float32 and tuple(B1.shape) == (2, 4, 5)


def test_verify_accepts_rounding_and_rejects_errors():
    A, B = bmm.make_inputs((2, 8, 64, 8))
    ref = torch.bmm(A, B)
    rtol, atol = tolerances(64)
    assert rtol == pytest.approx(1e-4) and atol == pytest.approx(1e-4 * 8)
    ok, err = verify(ref + atol / 10, ref, 64)
    assert ok and err == pytest.approx(atol / 10, rel=1e-2)
    wrong = ref.clone()
    wrong[1, 2, 3] += 1.0
    ok, err = verify(wrong, ref, 64)
    assert not ok and err == pytest.approx(1.0, rel=1e-4)
    assert verify(ref[:1], ref, 64) == (False, math.inf)
    assert verify("not a tensor", ref, 64)[0] is False


def test_flops_and_estimate():
    assert flops((5, 1000, 1000, 1000), 1000) == 2 * 5 * 10**9 * 1000
    cfg = bmm.Config.from_args(argparse.Namespace(repeat=10, quick=False))
    one = bmm.estimate_seconds(cfg, slots=2)
    cfg20 = bmm.Config.from_args(argparse.Namespace(repeat=20, quick=False))
    assert bmm.estimate_seconds(cfg20, slots=2) == pytest.approx(2 * one)
    assert bmm.estimate_seconds(cfg, slots=1) > one


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_bmm_gpu_matches_torch_bmm():
    A, B = bmm.make_inputs((3, 32, 48, 16))
    C = bmm_gpu(A, B, repeat=3)
    assert C.device.type == "cpu"
    ok, _ = verify(C, torch.bmm(A, B), 48)
    assert ok


@pytest.mark.skipif(CUDA, reason="checks the behaviour without a GPU")
def test_bmm_gpu_without_gpu_raises():
    A, B = bmm.make_inputs((1, 2, 2, 2))
    with pytest.raises(RuntimeError, match="CUDA"):
        bmm_gpu(A, B, repeat=1)


# ------------------------------------------------------------------ shapes, config, plan


def test_parse_shapes():
    assert bmm.parse_shape("5x1000x1000x1000") == (5, 1000, 1000, 1000)
    assert bmm.parse_shape("[10, 100, 100, 100]") == (10, 100, 100, 100)
    assert bmm.parse_shapes("5x100x100x100,10x100x200x300") == [
        (5, 100, 100, 100),
        (10, 100, 200, 300),
    ]
    for bad in ("5x100x100", "5x0x1x1", "axbxcxd", ""):
        with pytest.raises(ValueError):
            bmm.parse_shapes(bad)


def test_backend_options():
    opts = bmm.parse_options(["pack=15", "partition=debug", "spin_us=0.5", "x=true"])
    assert opts == {"pack": 15, "partition": "debug", "spin_us": 0.5, "x": True}
    cfg = bmm.Config.from_args(argparse.Namespace(backend="slurm", option=["pack=15"]))
    assert cfg.backend_options == {"pack": 15} and cfg.as_dict()["backend_options"] == {"pack": 15}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        bmm.parse_options(["pack"])


def test_default_config_is_the_study():
    cfg = bmm.Config.from_args(argparse.Namespace())
    assert (cfg.repeat, cfg.runs, cfg.gpu_repeat) == (1000, 5, 5000)
    assert len(cfg.shapes) == 9
    assert {s[0] for s in cfg.shapes} == {5, 10, 15}
    assert {s[1] for s in cfg.shapes} == {100, 500, 1000}
    assert cfg.table1_shapes == [
        (5, 1000, 1000, 1000),
        (10, 1000, 1000, 1000),
        (15, 1000, 1000, 1000),
    ]
    assert cfg.gpu_shape == (200, 1000, 1000, 1000)
    quick = bmm.Config.from_args(argparse.Namespace(quick=True, runs=3))
    assert quick.runs == 3 and quick.repeat < 10
    assert max(math.prod(s) for s in quick.shapes) < 10**6
    with pytest.raises(ValueError):
        bmm.Config.from_args(argparse.Namespace(repeat=0))


def test_plan_without_and_with_gpus():
    cfg = bmm.Config.from_args(argparse.Namespace())
    cpu_only = bmm.plan(cfg, gpus=0)
    modes = {s.mode for s in cpu_only}
    assert modes == {"bare_cpu", "single_cpu", "multi_cpu"}
    # table 1's serverless series is the same configuration as table 2's 1000-cubed rows
    single = [s for s in cpu_only if s.mode == "single_cpu"]
    assert len(single) == 9
    assert sorted(next(s for s in single if s.shape == (5, 1000, 1000, 1000)).tables) == [1, 2]
    with_gpu = bmm.plan(cfg, gpus=1)
    gpu_series = [s for s in with_gpu if s.mode in ("gpu", "bare_gpu", "multi_gpu")]
    assert {s.mode for s in gpu_series} == {"gpu", "bare_gpu", "multi_gpu"}
    table4 = [s for s in gpu_series if 4 in s.tables]
    assert all(s.shape == cfg.gpu_shape and s.repeat == cfg.gpu_repeat for s in table4)
    assert len([s for s in gpu_series if 3 in s.tables]) == 9


def test_multi_gpu_share():
    assert bmm.multi_gpu_share(1) == 0.5
    assert bmm.multi_gpu_share(2) == 1.0
    assert bmm.multi_gpu_share(8) == 1.0


# ------------------------------------------------------------------ example on a real executor


def test_example_defines_the_assignment_names(example):
    for name in (
        "bmm_single",
        "mm_single",
        "bmm_gpu",
        "call_singleCPU",
        "call_multiCPU",
        "call_GPU",
        "call_multiGPU",
    ):
        assert callable(getattr(example, name)), name
    # the kernels are importable by workers: they come from the package
    assert example.bmm_single.__module__ == "hetfaas.bench.kernels"


def test_call_single_cpu_verifies(example, ex):
    out = example.call_singleCPU(ex, (3, 16, 24, 8), repeat=2)
    assert out["verified"] is True
    assert out["max_abs_err"] is not None and out["max_abs_err"] <= out["atol"]
    (t,) = out["timings"]
    assert t["compute_us"] > 0 and t["total_us"] >= t["compute_us"]
    assert t["submitted_ns"] <= t["started_ns"] <= t["finished_ns"] <= t["completed_ns"]
    assert out["time_s"] * 1e6 >= t["compute_us"]


def test_call_multi_cpu_one_call_per_matrix(example, ex):
    bs = 5
    out = example.call_multiCPU(ex, (bs, 12, 20, 7), repeat=2)
    assert out["verified"] is True
    calls = out["timings"]
    assert len(calls) == bs
    assert sorted(c["index"] for c in calls) == list(range(bs))
    assert len({c["invocation_id"] for c in calls}) == bs
    slots = min(ex.capacity.cpus, ex.capacity.max_workers)
    assert all(c["worker"] >= 0 for c in calls)
    assert 1 <= len({c["worker"] for c in calls}) <= ex.capacity.max_workers
    from hetfaas.bench.report import max_concurrency

    assert 1 <= max_concurrency(calls) <= slots


def test_wrong_result_is_reported_not_hidden(ex):
    A, B = bmm.make_inputs((2, 4, 4, 4))
    bad_ref = torch.bmm(A, B) + 1.0
    trial = bmm.call_single_cpu(ex, A, B, 1, bad_ref)
    assert trial["verified"] is False
    assert trial["max_abs_err"] == pytest.approx(1.0, rel=1e-3)


@pytest.mark.skipif(CUDA, reason="checks the behaviour without a GPU")
def test_gpu_calls_skip_without_gpu(example, ex):
    assert ex.capacity.gpus == 0
    for fn in (example.call_GPU, example.call_multiGPU):
        out = fn(ex, (2, 8, 8, 8), repeat=1)
        assert out["skipped"] is True and out["reason"] == "no GPU"
    with pytest.raises(hetfaas.ResourceError):
        ex.options(resources=hetfaas.Resources(cpus=1, gpus=1)).submit(bmm_gpu, 1, 2)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_gpu_calls_verify(example, ex):
    out = example.call_GPU(ex, (2, 32, 32, 32), repeat=2)
    assert out["verified"] is True
    out = example.call_multiGPU(ex, (4, 32, 32, 32), repeat=2)
    assert out["verified"] is True and len(out["timings"]) == 2
