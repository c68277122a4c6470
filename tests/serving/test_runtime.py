"""Real mode on CPU devices: real torch models, faults, and agreement with the simulator."""

import pytest

torch = pytest.importorskip("torch")

from hetfaas.exceptions import (  # noqa: E402
    ConfigurationError,
    DeviceFailed,
    ModelLoadError,
    ModelTooLarge,
    UnknownModel,
)
from hetfaas.serving.catalog import Catalog, ModelProfile  # noqa: E402
from hetfaas.serving.functions import InferenceFunction  # noqa: E402
from hetfaas.serving.runtime import GPUManager, Runtime  # noqa: E402
from hetfaas.serving.simulator import simulate  # noqa: E402
from hetfaas.serving.workload import make_trace  # noqa: E402

from .models import WIDTHS, expected, register_all  # noqa: E402


@pytest.fixture
def infer(tmp_path):
    fn = InferenceFunction()
    register_all(fn, tmp_path)
    return fn


def budget(infer, models_per_device):
    """A device memory that holds about ``models_per_device`` of the models."""
    sizes = sorted(s.size_bytes for s in infer.specs.values())
    return sum(sizes[-models_per_device:])


@pytest.mark.parametrize("policy", ["lb", "lalb+o3", "ours"])
def test_requests_run_real_models_and_are_recorded(infer, policy):
    trace = make_trace(80, len(WIDTHS), 1000.0, seed=2)
    mgr = GPUManager.cpu(2, budget(infer, 2))
    batch = torch.randn(3, 8)
    refs = [expected(i, batch) for i in range(len(WIDTHS))]  # before threads use the RNG
    with Runtime(infer, [mgr], policy) as rt:
        futs = [rt.submit(f"mlp-{m}", batch) for m in trace.models]
        for m, fut in zip(trace.models, futs, strict=True):
            assert torch.allclose(fut.result(timeout=30), refs[m])
        rt.scheduler.state.check_invariants()
        recs = rt.records
        assert len(recs) == 80 and all(r.total_s > 0 and not r.error for r in recs)
        assert all(r.load_s > 0 for r in recs if not r.hit)
        assert all(r.load_s == 0 for r in recs if r.hit)
        assert 0 < sum(not r.hit for r in recs) < 80
        for d, (m, local) in enumerate(rt.slots):  # the real modules mirror the caches
            cache = rt.scheduler.state.caches[d]
            assert set(m.models[local]) == {rt.names[x] for x in cache}
            assert m.free_bytes(local) == cache.free
        assert [s["busy"] for s in mgr.status()] == [False, False]
        s = rt.summary()
        assert s["requests"] == 80 and 0 < s["miss_ratio"] < 1


@pytest.mark.parametrize("policy", ["lb", "lalb", "lalb+o3", "ours"])
def test_runtime_and_simulator_agree_on_the_same_trace(infer, policy):
    """One request at a time: the same decisions, so exactly the same hits and misses."""
    trace = make_trace(60, len(WIDTHS), 1.0, seed=4)
    mem = budget(infer, 2)
    batch = torch.randn(2, 8)
    with Runtime(infer, [GPUManager.cpu(2, mem)], policy) as rt:
        for m in trace.models:
            rt.infer(f"mlp-{m}", batch)
        real_hits = [r.hit for r in rt.records]
        real_devices = [r.device for r in rt.records]
    cat = Catalog([ModelProfile(n, s.size_bytes, 1e-3, 1e-3) for n, s in infer.specs.items()])
    sim = simulate(trace, cat, [mem, mem], policy)  # arrivals 1 s apart: no queueing either
    assert sim.hit == real_hits
    assert sim.device == real_devices


def test_bad_requests(infer):
    with Runtime(infer, [GPUManager.cpu(2, 1000)], "lalb") as rt:
        with pytest.raises(UnknownModel, match="registered: mlp-0"):
            rt.submit("resnet-like-7", None)
        with pytest.raises(ModelTooLarge, match="largest working device holds 1000"):
            rt.submit("mlp-5", None)
        assert rt.records == []
    with pytest.raises(ConfigurationError, match="register at least one model"):
        Runtime(InferenceFunction(), [GPUManager.cpu(1)])
    with pytest.raises(ConfigurationError, match="unknown weight store 'ftp'"):
        InferenceFunction().register("x", lambda: torch.nn.Linear(2, 2), weights="ftp://h/x")


def test_a_loader_that_raises_fails_only_its_requests(infer):
    def broken():
        raise OSError("weights corrupted")

    infer.register("broken", broken, size_bytes=100)
    batch = torch.randn(1, 8)
    ref = expected(0, batch)
    with Runtime(infer, [GPUManager.cpu(2, budget(infer, 2))], "lalb+o3") as rt:
        bad = rt.submit("broken", batch)
        good = rt.submit("mlp-0", batch)
        with pytest.raises(ModelLoadError, match="weights corrupted") as info:
            bad.result(timeout=30)
        assert isinstance(info.value.__cause__, OSError)
        assert torch.allclose(good.result(timeout=30), ref)
        with pytest.raises(ModelLoadError):
            rt.infer("broken", batch)
        state = rt.scheduler.state
        state.check_invariants()
        broken_id = rt.names.index("broken")
        assert all(broken_id not in c for c in state.caches)
        assert rt.records[0].error.startswith("ModelLoadError")


def test_a_device_failing_mid_request_is_retried_elsewhere(infer):
    batch = torch.randn(2, 8)
    ref = expected(1, batch)
    mgr = GPUManager.cpu(3, budget(infer, 3))
    with Runtime(infer, [mgr], "lalb+o3") as rt:
        rt.infer("mlp-1", batch)  # resident on some device
        d = rt.records[0].device
        mgr.fail_next(d)
        futs = [rt.submit("mlp-1", batch) for _ in range(4)]  # they go to d (the holder)
        for fut in futs:
            assert torch.allclose(fut.result(timeout=30), ref)
        recs = rt.records[1:]
        assert recs[0].retries == 1 and recs[0].device != d
        assert all(r.device != d and not r.error for r in recs)
        state = rt.scheduler.state
        assert state.failed[d] and mgr.models[d] == {}
        state.check_invariants()
        # every device failing: the request is retried up to max_retries, then DeviceFailed
        for local in range(3):
            mgr.fail_next(local)
        with pytest.raises(DeviceFailed):
            rt.infer("mlp-1", batch)
        with pytest.raises(DeviceFailed, match="no working device"):
            rt.submit("mlp-1", batch)


def test_inference_function_keeps_models_per_process(tmp_path):
    calls = []

    def factory():
        calls.append(1)
        return torch.nn.Linear(8, 4)

    fn = InferenceFunction(memory_bytes=200)
    fn.register("a", factory)  # 8*4*4 + 4*4 = 144 bytes, measured on the meta device
    fn.register("b", factory)
    assert fn.specs["a"].size_bytes == 144
    x = torch.randn(1, 8)
    fn("a", x)
    fn("a", x)
    assert len(calls) == 3  # two to measure, one to load: the second call hit
    fn("b", x)  # evicts a (200 bytes hold one)
    fn("a", x)
    assert len(calls) == 5
    with pytest.raises(UnknownModel):
        fn("c", x)
    big = InferenceFunction(memory_bytes=100)
    big.register("a", factory)
    with pytest.raises(ModelTooLarge):
        big("a", x)


def test_inference_function_through_an_executor(ex, tmp_path):
    from .models import mlp

    infer = InferenceFunction()
    register_all(infer, tmp_path, widths=[16, 24])
    batch = torch.randn(4, 8)
    futs = [ex.submit(infer, f"mlp-{i % 2}", batch) for i in range(4)]
    for i, fut in enumerate(futs):
        with torch.inference_mode():
            assert torch.allclose(fut.result(timeout=60), mlp([16, 24][i % 2])()(batch))
    with pytest.raises(UnknownModel):
        ex.submit(infer, "nope", batch).result(timeout=60)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU on this machine")
def test_real_mode_on_the_gpus(infer):
    mgr = GPUManager.detect()
    assert all(d.startswith("cuda") for d in mgr.devices)
    batch = torch.randn(4, 8)
    refs = [expected(i, batch) for i in range(len(WIDTHS))]
    with Runtime(infer, [mgr], "lalb+o3") as rt:
        futs = [rt.submit(f"mlp-{i % len(WIDTHS)}", batch) for i in range(30)]
        for i, fut in enumerate(futs):
            assert torch.allclose(fut.result(timeout=60), refs[i % len(WIDTHS)], atol=1e-5)
        assert rt.summary()["requests"] == 30
        rt.scheduler.state.check_invariants()


def test_a_device_error_while_loading_fails_the_device_not_the_request(infer):
    """A CUDA error is forced from the factory: the request runs on another device."""
    broken_once = []

    def factory():
        if not broken_once:
            broken_once.append(1)
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return torch.nn.Linear(8, 4)

    infer.register("flaky", factory, size_bytes=200)
    batch = torch.randn(2, 8)
    mgr = GPUManager.cpu(2, budget(infer, 2))
    with Runtime(infer, [mgr], "lalb") as rt:
        out = rt.infer("flaky", batch)
        assert out.shape == (2, 4)
        rec = rt.records[0]
        assert rec.retries == 1 and not rec.error
        assert sum(rt.scheduler.state.failed) == 1
        assert not rt.scheduler.state.failed[rec.device]
        rt.scheduler.state.check_invariants()
