"""bench bmm --monitor: samples split by what ran when, CPU-seconds per side, the report."""

import argparse
import json

from hetfaas.bench import bmm, bmm_monitor
from hetfaas.monitor.sampler import Sample


def _s(t, cpu_s, cpu_pct=100.0, rss=100.0):
    return Sample(t, cpu_pct, cpu_s, rss, 4, 1, 50.0, 1000.0)


def test_samples_are_split_by_the_mode_that_ran_and_cpu_seconds_interpolated():
    # one core busy all along (cpu_s grows 1 s per s); bare ran 0-1 s, serverless 1-3 s,
    # bare again 3-3.5 s; the samples every 0.5 s
    samples = [_s(0.5 * i, 0.5 * i, rss=100 + i) for i in range(9)]
    mon = {
        "interval_s": 0.5, "cost_fraction": 0.01, "gpus_sampled": 0,
        "intervals": [("bare_cpu", 0.0, 1.0), ("single_cpu", 1.0, 3.0), ("bare_cpu", 3.0, 3.5)],
        "samples": samples,
    }  # fmt: skip
    summary = bmm_monitor.summarize(mon)
    assert summary["bare metal"]["seconds"] == 1.5
    assert abs(summary["bare metal"]["cpu_s"] - 1.5) < 1e-9
    assert abs(summary["serverless"]["cpu_s"] - 2.0) < 1e-9
    assert summary["single_cpu"]["mem_peak_mb"] == 106  # the sample at t=3.0 (i=6)
    # a span between two samples still gets its interpolated share
    short = {**mon, "intervals": [("bare_cpu", 0.6, 0.7)]}
    assert abs(bmm_monitor.summarize(short)["bare_cpu"]["cpu_s"] - 0.1) < 1e-9
    text = bmm_monitor.markdown(mon, summary)
    assert "| **bare metal** | 1.50 | 1.50 |" in text and "monitor.png" in text


def test_a_study_with_monitor_writes_both_sides(tmp_path):
    parser = argparse.ArgumentParser()
    bmm.add_arguments(parser)
    out = tmp_path / "bmm"
    args = parser.parse_args([
        "--shapes", "10x150x150x150", "--table1-shapes", "10x150x150x150", "--repeat", "150",
        "--runs", "1", "--monitor", "--monitor-interval", "0.05", "--out", str(out),
    ])  # fmt: skip
    assert bmm.run(args) == 0
    res = json.loads((out / "results.json").read_text())
    summary = res["monitor"]["summary"]
    assert summary["bare metal"]["cpu_s"] > 0.05 and summary["serverless"]["cpu_s"] > 0.05
    assert {"bare_cpu", "single_cpu", "multi_cpu"} <= set(summary)
    assert (out / "monitor.png").stat().st_size > 10_000
    rows = (out / "monitor.csv").read_text().splitlines()
    assert rows[0].startswith("mode,t_s,cpu_percent") and len(rows) > 5
    assert "bare metal and serverless" in (out / "report.md").read_text()
