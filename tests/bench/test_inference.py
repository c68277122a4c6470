"""The inference benchmark's pieces, on small sizes."""

import json

import pytest

from hetfaas.bench import inference
from hetfaas.exceptions import ConfigurationError


def test_sweep_and_report_carry_the_papers_figures():
    res = {"sweep": inference.run_sweep([5, 35], ["lb", "lalb", "lalb+o3", "ours"], 1500)}
    rows = res["sweep"]["rows"]
    assert len(rows) == 8
    red = inference.reductions(rows, 35)
    assert red["lalb"]["miss_ratio"] < 0 and red["lalb+o3"]["avg_latency_s"] < 0
    text = inference.format_report(res)
    assert "-79.43%" in text and "-65.21%" in text and "-96.93%" in text and "-81.16%" in text
    assert "Ours against LALB+O3" in text


def test_speed_rows():
    rows = inference.run_speed(16, 5000, ["lb"], working_set=20)
    assert rows[0]["events"] >= 10_000 and rows[0]["sim_s"] > 0


def test_real_mode_rows_compare_with_the_simulator():
    """Shape only: timed replay agreement depends on this machine's timing (the bench
    reports it); exact agreement, one request at a time, is tests/serving/test_runtime.py's."""
    pytest.importorskip("torch")
    rows = inference.run_real((5,), ("lb", "lalb+o3"), n_requests=40, rate=200.0)
    assert [r["policy"] for r in rows] == ["lb", "lalb+o3"]
    for r in rows:
        assert 0 < r["real_miss_ratio"] <= 1 and 0 < r["sim_miss_ratio"] <= 1
        assert 0 <= r["same_decision"] <= 1 and r["real_avg_latency_s"] > 0


def test_cli_writes_report_json_and_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from hetfaas import cli

    out = tmp_path / "inf"
    code = cli.main(
        [
            "bench",
            "inference",
            "--quick",
            "--working-sets",
            "5,10",
            "--policies",
            "lb,lalb",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert (out / "report.md").read_text().startswith("### Sweep")
    data = json.loads((out / "results.json").read_text())
    assert {r["policy"] for r in data["sweep"]["rows"]} == {"lb", "lalb"}
    assert (out / "inference_miss_ratio.png").stat().st_size > 0
    assert "lalb avg / p99 / miss" in capsys.readouterr().out


def test_cli_bad_input(capsys):
    from hetfaas import cli

    assert cli.main(["bench", "inference", "--policies", "lb,nope"]) == 2
    assert "known policies: lb" in capsys.readouterr().err
    assert cli.main(["bench", "inference", "--working-sets", "5,x"]) == 2
    with pytest.raises(ConfigurationError):
        inference.run_sweep([0])
