"""``hetfaas bench collectives`` on a tiny run: every row measured, ratios and calibration."""

import argparse
import json

import pytest

from hetfaas.bench import collectives as bench
from hetfaas.collectives import model
from hetfaas.exceptions import ConfigurationError


def test_sizes_parse_and_print():
    assert [bench.parse_size(s) for s in ("8", "1K", "64k", "1M", "64MB")] == [
        8, 1024, 65536, 1 << 20, 64 << 20,
    ]  # fmt: skip
    assert [bench.fmt_size(n) for n in (8, 1024, 64 << 20)] == ["8B", "1K", "64M"]


def test_tiny_run_measures_every_row_and_calibrates(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "iterations", lambda nbytes, quick: (1, 3))
    res = bench.run_collectives(["file", "tcp"], [8, 4096], [2, 3], quick=True, log=lambda m: None)
    assert set(res["pingpong"]) == {"file", "tcp"}
    for name in ("file", "tcp"):
        assert all(res["pingpong"][name][n] > 0 for n in (8, 4096))
        assert set(res["allreduce"][name]) == {2, 3}
    assert res["raw"]["tcp_pingpong"][8] > 0
    assert "openmpi-tcp" in res["allreduce"] or "openmpi" in "".join(res["skipped"])
    assert any(k.startswith("tcp send/recv 8B") for k in res["ratios"])
    assert "direct TCP small send/recv <= 1.5x raw ping-pong" in res["targets"]
    text = bench.format_table(res)
    assert "raw TCP ping-pong" in text and "tcp ping-pong" in text and "Ratios" in text
    profiles = bench.calibrate(res)
    assert set(profiles) >= {"file", "tcp"}
    path = model.save_profiles(profiles, tmp_path / "m.json")
    assert model.load_profiles(path)["tcp"].source == "calibrated"
    json.dumps(res, default=str)  # the --json output is plain data


def test_ratios_name_the_targets():
    res = {
        "sizes": [8, 64 << 20], "peers": [4],
        "raw": {"tcp_pingpong": {8: 1e-5}, "redis_set_get": {8: 1e-4}},
        "pingpong": {"tcp": {8: 1.2e-5}, "redis": {8: 4e-4}},
        "allreduce": {"tcp": {4: {64 << 20: 0.3}}, "openmpi-tcp": {4: {64 << 20: 0.2}}},
    }  # fmt: skip
    ratios, targets = bench.ratios(res)
    assert ratios["tcp send/recv 8B vs raw TCP ping-pong"] == pytest.approx(1.2)
    assert ratios["redis one message 8B vs raw SET+GET"] == pytest.approx(2.0)
    assert targets == {
        "direct TCP small send/recv <= 1.5x raw ping-pong": True,
        "Redis <= 1.5x raw SET+GET": False,
        "allreduce 64 MB at P=4 over TCP <= 1.5x OpenMPI TCP": True,
    }


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--channels", "pigeon"], "unknown channel"),
        (["--sizes", "8,x"], "bad size"),
        (["--peers", "1"], "peers must be >= 2"),
        (["--sizes", "0"], "positive"),
    ],
)
def test_bad_options(argv, match):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    with pytest.raises(ConfigurationError, match=match):
        bench.run(parser.parse_args(argv))
