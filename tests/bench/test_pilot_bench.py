"""hetfaas bench pilot: the report from measurements, and a short run on the real Slurm."""

import argparse

from hetfaas.bench import pilot

from ..conftest import start_slurm


def test_report_states_each_target():
    res = {"launch_s": [0.3, 0.4, 0.5], "cold_s": [0.9, 1.0, 2.5], "warm_s": [0.0005] * 99 + [0.01],
           "rates": {20: 8000.0, 10000: 4000.0}, "hetfaas_slurm_s": [0.4, 0.42, 0.5],
           "submitit_s": [1.1]}  # fmt: skip
    text = pilot.format_report(res)
    assert "| pilot | warm no-op call, p50 / p99 of 100 | 0.50 ms / 10.00 ms |" in text
    assert "warm p50 0.50 ms (target <= 2 ms): met" in text
    assert "one block 8,000 calls/s (target >= 5,000): met" in text
    assert "zero to first result 1.00 s vs batch launch 400.00 ms + 1.5 s: met" in text
    assert "(the pilot's own part 600.00 ms)" in text
    assert "840x faster" in text and "| plain Submitit |" in text
    slow = dict(res, warm_s=[0.003], rates={20: 100.0}, cold_s=[5.0, 5.0, 5.0])
    assert pilot.format_report(slow).count("missed") == 3


def test_short_run_on_slurm():
    start_slurm()
    p = argparse.ArgumentParser()
    pilot.add_arguments(p)
    args = p.parse_args(["--calls", "50", "--throughput", "20,500", "--repeat", "1",
                         "--cold", "1", "--no-baselines"])  # fmt: skip
    args.throughput = [20, 500]
    res = pilot.run_bench(args)
    assert len(res["warm_s"]) == 50 and res["blocks"] == 1  # every call through one block
    assert set(res["rates"]) == {20, 500} and all(r > 0 for r in res["rates"].values())
    assert len(res["cold_s"]) == len(res["launch_s"]) == 1 and res["cold_s"][0] > 0
    assert "warm no-op call" in pilot.format_report(res)
