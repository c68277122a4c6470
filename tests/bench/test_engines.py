"""``hetfaas bench overhead --backends``: every engine next to the raw engine, on a few calls."""

import pathlib
import subprocess

import pytest

from hetfaas.bench import engines
from hetfaas.exceptions import ConfigurationError

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_unknown_engine_is_named():
    with pytest.raises(ConfigurationError, match=r"nope.*local"):
        engines.run_engines(["nope"], [2], quick=True)


def test_local_and_ray_next_to_raw_ray():
    pytest.importorskip("ray")
    res = engines.run_engines(["local", "ray"], [3], quick=True, log=lambda _: None)
    systems = [r["system"] for r in res["rows"]]
    assert systems == ["hetfaas local", "hetfaas ray", "plain Ray (ray.get(f.remote()))"]
    for row in res["rows"]:
        assert 0 < row["p50_ms"] <= row["p99_ms"]
        assert row["rates"]["3"] > 0
    assert res["ratios"]["ray p50 ours/raw"] > 0
    ours_ray = res["rows"][1]  # measured in the same Ray session as plain Ray, interleaved
    assert ours_ray["median_phases_ms"]["total_ms"] > 0
    assert "| ray | plain Ray" in engines.format_engines(res)


def test_slurm_packed_unpacked_and_plain_submitit():
    pytest.importorskip("submitit")
    proc = subprocess.run([str(ROOT / "scripts" / "slurm-up")], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    if proc.returncode != 0:
        pytest.fail(f"scripts/slurm-up failed:\n{proc.stdout}\n{proc.stderr}")
    res = engines.run_engines(["slurm"], [3], quick=True, log=lambda _: None)
    ours, packed, plain = res["rows"]
    assert ours["system"] == "hetfaas slurm" and "pack=N" in packed["system"]
    assert plain["system"].startswith("plain Submitit")
    assert packed["p50_ms"] is None and packed["rates"]["3"] > 0
    assert ours["median_phases_ms"]["queue_ms"] > 0  # Slurm's pending and launch: queue time
    assert {"slurm p50 ours/raw", "slurm 3 calls/s packed/raw"} <= set(res["ratios"])


def test_parsl_next_to_plain_parsl():
    pytest.importorskip("parsl")
    res = engines.run_engines(["parsl"], [3], quick=True, log=lambda _: None)
    ours, one, plain = res["rows"]
    assert ours["system"] == "hetfaas parsl" and "chunksize=1" in one["system"]
    assert plain["system"].startswith("plain Parsl")
    for row in (ours, plain):
        assert 0 < row["p50_ms"] <= row["p99_ms"]
        assert 0 < row["zero_blocks_to_first_s"] < 120  # a block started for the first call
    assert all(r["rates"]["3"] > 0 for r in res["rows"])
    assert ours["median_phases_ms"]["total_ms"] > 0
    assert {"parsl p50 ours/raw", "parsl zero blocks to first result ours/raw"} <= set(
        res["ratios"]
    )
    assert "zero blocks to first result" in engines.format_engines(res)


def test_slurm_pilot_next_to_plain_submitit():
    pytest.importorskip("submitit")
    proc = subprocess.run([str(ROOT / "scripts" / "slurm-up")], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    if proc.returncode != 0:
        pytest.fail(f"scripts/slurm-up failed:\n{proc.stdout}\n{proc.stderr}")
    res = engines.run_engines(["slurm-pilot"], [3], quick=True, log=lambda _: None)
    ours, plain, parsl = res["rows"]
    assert ours["system"].startswith("hetfaas slurm-pilot") and plain["system"].startswith(
        "plain Submitit"
    )
    assert parsl["system"].startswith("plain Parsl HTEX on Slurm") and parsl["p50_ms"] > 0
    assert "slurm-pilot p50 pilot/" + parsl["system"] in res["ratios"]
    assert 0 < ours["p50_ms"] < plain["p50_ms"]  # a warm block against a job per call
    assert 0 < ours["zero_blocks_to_first_s"] < 120
    assert "slurm-pilot p50 ours/raw" in res["ratios"]
