"""GPU ownership through CUDA_VISIBLE_DEVICES, checked without a GPU: the pool is told of two
devices by the caller's own CUDA_VISIBLE_DEVICES (as a scheduler would), and each worker reports
what it was given. Nothing here touches CUDA."""

import pytest

import hetfaas

from .. import pool_funcs as fx
from ..conftest import CORES

pytestmark = pytest.mark.skipif(CORES < 2, reason="needs two cores for two concurrent calls")


@pytest.fixture
def gpu_ex(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    ex = hetfaas.Executor()
    yield ex
    ex.shutdown(wait=False, cancel_futures=True)


def _overlap(a, b):
    return a[1] < b[2] and b[1] < a[2]


def test_whole_gpu_calls_get_distinct_devices(gpu_ex):
    assert gpu_ex.capacity.gpus == 2
    gpu_ex.warmup(2, hetfaas.Resources(gpus=1))
    run = gpu_ex.options(gpus=1)
    a, b = run.submit(fx.visible_gpus, 0.5), run.submit(fx.visible_gpus, 0.5)
    ra, rb = a.result(timeout=60), b.result(timeout=60)
    assert {ra[0], rb[0]} == {"0", "1"}
    assert _overlap(ra, rb)
    assert a.timings.gpus != b.timings.gpus


def test_cpu_calls_see_no_gpu(gpu_ex):
    assert gpu_ex.submit(fx.visible_gpus).result(timeout=60)[0] == ""


def test_two_half_shares_run_together_on_one_device(gpu_ex):
    gpu_ex.warmup(2, hetfaas.Resources(gpus=0.5))
    half = gpu_ex.options(gpus=0.5)
    a, b = half.submit(fx.visible_gpus, 0.5), half.submit(fx.visible_gpus, 0.5)
    ra, rb = a.result(timeout=60), b.result(timeout=60)
    assert ra[0] == rb[0] and _overlap(ra, rb)


def test_three_whole_gpu_calls_queue_on_two_devices(gpu_ex):
    run = gpu_ex.options(gpus=1)
    futs = [run.submit(fx.visible_gpus, 0.3) for _ in range(3)]
    rs = [f.result(timeout=60) for f in futs]
    for i in range(3):
        for j in range(i + 1, 3):
            if rs[i][0] == rs[j][0]:
                assert not _overlap(rs[i], rs[j]), "two whole-GPU calls shared a device"
