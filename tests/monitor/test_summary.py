"""Efficiencies and advice: pure functions of samples, tested on synthetic ones."""

import pytest

from hetfaas.monitor import Sample, Usage, advise, usage_of


def samples(cpu_per_s: float, rss: list[float], gpu: list[float] | None = None) -> list[Sample]:
    out = []
    for i, r in enumerate(rss):
        g = None if gpu is None else gpu[i]
        out.append(Sample(float(i), cpu_per_s * 100, cpu_per_s * i, r, 4, 1, 50.0, 1000.0, g,
                          None if g is None else 2048.0 + 100 * i))  # fmt: skip
    return out


def test_cpu_efficiency_is_cpu_time_over_wall_times_cores():
    u = usage_of(samples(1.0, [100.0] * 11), cpus=4)
    assert (u.wall_s, u.cpu_s) == (10.0, 10.0)
    assert u.cpu_efficiency == pytest.approx(0.25)
    assert any("used 25% of 4 core(s)" in a and "request 1 core(s)" in a for a in u.advice)


def test_exact_figures_win_over_sampled_ones():
    u = usage_of(samples(1.0, [100.0, 300.0, 200.0]), cpus=2, cpu_s=3.0, wall_s=2.0,
                 peak_rss_mb=350.0)  # fmt: skip
    assert (u.cpu_s, u.wall_s, u.peak_rss_mb) == (3.0, 2.0, 350.0)
    assert u.cpu_efficiency == pytest.approx(0.75)
    assert not any("request" in a for a in u.advice if a.startswith("CPU"))


def test_memory_advice_low_and_close_to_the_limit():
    low = usage_of(samples(1.0, [50.0, 307.0, 100.0]), cpus=1, memory_mb=5120.0)
    assert low.memory_efficiency == pytest.approx(307 / 5120)
    assert "used 6% of the requested memory" in low.advice[1]
    assert "request about 384 MiB" in low.advice[1]
    high = usage_of(samples(1.0, [950.0]), cpus=1, memory_mb=1000.0)
    assert any("OOM killer" in a for a in high.advice)
    unasked = usage_of(samples(1.0, [2048.0]), cpus=1)
    assert unasked.memory_efficiency is None
    assert "memory: peak 2.00 GiB (nothing requested)" in unasked.advice


def test_gpu_utilisation_and_peak_memory():
    u = usage_of(samples(1.0, [10.0] * 4, gpu=[10.0, 20.0, 30.0, 40.0]), cpus=1, gpus=1)
    assert u.gpu_util_percent == pytest.approx(25.0) and u.gpu_peak_mem_mb == 2348.0
    assert any("averaged 25%" in a and "waited" in a for a in u.advice)
    busy = usage_of(samples(1.0, [10.0] * 2, gpu=[90.0, 95.0]), cpus=1, gpus=1)
    assert not any("waited" in a for a in busy.advice)


def test_advice_of_a_run_without_wall_time():
    assert advise(Usage(0.0, 0.0, 1, 0.0)) == ["memory: peak 0 MiB (nothing requested)"]
