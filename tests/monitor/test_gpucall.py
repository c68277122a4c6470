"""A call's GPU usage: None without a driver (never an error); filled on a real GPU."""

import pytest
import torch

import hetfaas
from hetfaas.monitor import gpucall

from .. import pool_funcs as fx


def test_without_a_driver_the_meter_says_unknown(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setattr(gpucall, "_nvml", [])
    meter = gpucall.GpuMeter()
    meter.start()
    util, mem = meter.stop()
    if gpucall._nvml[0] is None:  # no NVML here (the CI machine): unknown, no error
        assert (util, mem) == (None, None)
    else:  # a driver: this process holds no GPU memory
        assert mem is None or mem >= 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_call_reports_its_peak_gpu_memory_and_utilisation():
    with hetfaas.Executor() as ex:
        fut = ex.options(gpus=1).submit(fx.gpu_matmuls, 2.0)
        assert fut.result(timeout=120) > 0
        u = fut.usage
        assert u is not None and u.gpus == 1
        assert u.gpu_peak_mem_mb is not None and u.gpu_peak_mem_mb >= 64  # 4096^2 fp32 x3
        assert u.gpu_util_percent is not None and u.gpu_util_percent > 10
