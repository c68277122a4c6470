"""The bmm report: a real quick study end to end, and the numbers on hand-made results."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import re

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from hetfaas import Timings
from hetfaas.bench import bmm, report
from hetfaas.bench.report import PHASES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One real quick study (local executor), its stdout JSON and its output folder."""
    out = tmp_path_factory.mktemp("bmm")
    parser = argparse.ArgumentParser()
    bmm.add_arguments(parser)
    args = parser.parse_args(["--quick", "--out", str(out), "--json"])
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = bmm.run(args)
    return {"rc": rc, "stdout": buf.getvalue(), "out": out, "args": args}


def test_quick_study_succeeds(quick):
    assert quick["rc"] == 0
    assert (quick["out"] / "report.md").is_file()
    assert (quick["out"] / "results.json").is_file()


def test_json_stdout_matches_results_file(quick):
    printed = json.loads(quick["stdout"])
    saved = json.loads((quick["out"] / "results.json").read_text())
    assert printed["config"] == saved["config"]
    assert [s["key"] for s in printed["series"]] == [s["key"] for s in saved["series"]]


def test_results_hold_raw_timings(quick):
    res = json.loads((quick["out"] / "results.json").read_text())
    cfg = res["config"]
    assert cfg["quick"] is True
    assert cfg["repeat"] == bmm.QUICK_REPEAT and cfg["runs"] == bmm.QUICK_RUNS
    modes = {s["mode"] for s in res["series"]}
    assert {"bare_cpu", "single_cpu", "multi_cpu"} <= modes
    fields = set(Timings().as_dict())
    n_calls = 0
    for s in res["series"]:
        assert len(s["trials"]) == cfg["runs"]
        assert sorted(t["run"] for t in s["trials"]) == list(range(cfg["runs"]))
        for t in s["trials"]:
            assert t["verified"] is True
            assert t["time_s"] > 0
            expected = {"multi_cpu": s["shape"][0], "multi_gpu": 2}.get(s["mode"], 1)
            assert len(t["calls"]) == expected
            for c in t["calls"]:
                assert fields <= set(c)
                total = sum(c[p] for p in PHASES)
                assert total == pytest.approx(c["total_us"], rel=1e-6, abs=1.0)
                assert c["submitted_ns"] <= c["started_ns"] <= c["finished_ns"]
                assert c["finished_ns"] <= c["completed_ns"]
                if not s["mode"].startswith("bare"):
                    # the caller's clock covers the whole call
                    assert t["t0_ns"] <= c["submitted_ns"] and c["completed_ns"] <= t["t1_ns"]
                    assert c["invocation_id"]
                    assert c["worker"] >= 0
                n_calls += 1
    assert n_calls > 0
    cold = res["cold_start"]
    assert cold["pool_warmup_s"] >= 0 and len(cold["warm_calls"]) > 0
    assert set(res["calibration"]) >= {bmm.shape_key(s) for s in bmm.QUICK_SHAPES}
    assert res["machine"]["logical_cores"] >= 1


def test_report_has_the_four_tables_and_machine(quick):
    text = (quick["out"] / "report.md").read_text()
    res = json.loads((quick["out"] / "results.json").read_text())
    for heading in ("## Machine", "## Table 1", "## Table 2", "## Table 3", "## Table 4"):
        assert heading in text
    assert res["machine"]["cpu_model"] in text
    assert f"repeat **{bmm.QUICK_REPEAT}**" in text
    # table 1 shows every run of every shape
    t1 = text.split("## Table 1")[1].split("## Table 2")[0]
    for shape in bmm.QUICK_TABLE1_SHAPES:
        rows = [r for r in t1.splitlines() if r.startswith(f"| {bmm.shape_label(shape)} |")]
        assert len(rows) == bmm.QUICK_RUNS + 1  # every run and the median
    t2 = text.split("## Table 2")[1].split("## Table 3")[0]
    for shape in bmm.QUICK_SHAPES:
        assert f"| {bmm.shape_label(shape)} |" in t2
    if res["capacity"]["gpus"] == 0:
        t3 = text.split("## Table 3")[1].split("## Table 4")[0]
        assert t3.count("no GPU") >= len(bmm.QUICK_SHAPES)
        t4 = text.split("## Table 4")[1].split("##")[0]
        assert "no GPU" in t4 and "skipped" in t4
    assert "## Discussion" in text
    assert "NO (" not in text  # every result verified


def test_report_numbers_come_from_results(quick):
    res = json.loads((quick["out"] / "results.json").read_text())
    text = (quick["out"] / "report.md").read_text()
    summary = report.summarize(res)
    single = next(e for e in summary["series"].values() if e["mode"] == "single_cpu")
    assert report.fmt_s(single["stats"]["median"]) in text
    med = summary["modes"]["single_cpu"]["overhead_us"]["median"]
    assert f"{report.fmt_ms(med)} ms" in text
    assert summary["modes"]["multi_cpu"]["phase_sum_error_us"] < 1.0


def test_plots_are_png_and_linked(quick):
    text = (quick["out"] / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert {"times.png", "timeline.png"} <= set(links)
    import matplotlib.image as mpimg

    for name in links:
        path = quick["out"] / name
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC
        img = mpimg.imread(path)
        assert img.shape[0] > 100 and img.shape[1] > 100


# ------------------------------------------------------------------ hand-made results


def _call(index: int, start_ms: float, compute_ms: float, worker: int, over_us: float) -> dict:
    t0 = 1_000_000_000
    started = t0 + int(start_ms * 1e6)
    finished = started + int(compute_ms * 1e6)
    tm = Timings(
        queue_us=over_us / 2,
        transfer_in_us=over_us / 4,
        compute_us=compute_ms * 1e3,
        transfer_out_us=over_us / 4,
        total_us=over_us + compute_ms * 1e3,
        submitted_ns=t0,
        started_ns=started,
        finished_ns=finished,
        completed_ns=finished + int(over_us * 250),
        worker=worker,
        cpus=(worker,),
    )
    return {"index": index, "invocation_id": f"x-{index}", **tm.as_dict()}


def _series(mode: str, shape, times, repeat=2, calls_per=1, over_us=100.0):
    trials = []
    for run, t in enumerate(times):
        calls = [
            _call(i, start_ms=(i // 2) * 1.0, compute_ms=1.0, worker=i % 2, over_us=over_us)
            for i in range(calls_per)
        ]
        trials.append(
            {
                "run": run,
                "time_s": t,
                "wall_s": t,
                "t0_ns": 1_000_000_000,
                "t1_ns": 1_000_000_000 + int(t * 1e9),
                "verified": True,
                "max_abs_err": 1e-6,
                "calls": calls,
            }
        )
    return {
        "key": f"{mode}:{bmm.shape_key(shape)}:r{repeat}",
        "mode": mode,
        "shape": list(shape),
        "repeat": repeat,
        "trials": trials,
    }


def _results(gpus: int = 0) -> dict:
    from hetfaas import machine

    t1 = [4, 10, 10, 10]
    t2 = [6, 10, 10, 10]
    series = [
        _series("bare_cpu", t1, [1.0, 1.0, 1.2]),
        _series("single_cpu", t1, [1.5, 1.5, 1.8], over_us=500.0),
        _series("single_cpu", t2, [2.0, 4.0, 3.0], over_us=400.0),
        _series("multi_cpu", t2, [1.0, 1.0, 2.0], calls_per=6, over_us=300.0),
    ]
    gpu = {"available": False, "count": 0, "note": "no GPU"}
    if gpus:
        g4 = [4, 8, 8, 8]
        series += [
            _series("gpu", t2, [0.5, 0.25, 0.5]),
            _series("bare_gpu", g4, [0.2, 0.2, 0.2], repeat=5),
            _series("gpu", g4, [0.3, 0.3, 0.4], repeat=5, over_us=2000.0),
            _series("multi_gpu", g4, [0.25, 0.2, 0.25], repeat=5, calls_per=2),
        ]
        gpu = {
            "available": True,
            "count": 1,
            "note": "1 GPU: the two half-batch calls asked for gpus=0.5 each and shared device 0",
            "multi_gpu_share": 0.5,
            "shared_device": True,
        }
    return {
        "schema": "hetfaas.bench.bmm/1",
        "started_at": "2026-01-01T00:00:00+00:00",
        "elapsed_s": 12.5,
        "load_avg_start": [0.5, 0.4, 0.3],
        "machine": machine.describe(with_gpus=False),
        "backend": "local",
        "capacity": {"cpus": 2, "gpus": gpus, "gpu_names": [], "max_workers": 2, "cpu_slots": 2},
        "config": {
            "repeat": 2,
            "runs": 3,
            "gpu_repeat": 5,
            "shapes": [t2],
            "table1_shapes": [t1],
            "gpu_shape": [4, 8, 8, 8],
            "quick": False,
            "seed": 0,
            "backend": "local",
            "rtol": 1e-4,
            "atol": "0.0001 * sqrt(N)",
        },
        "gpu": gpu,
        "cold_start": {"cpu_workers": 2, "pool_warmup_s": 0.25, "warm_calls": []},
        "calibration": {"4x10x10x10": {"gflops": 10.0}, "6x10x10x10": {"gflops": 12.0}},
        "series": series,
    }


def test_stats_and_concurrency():
    st = report.stats([1.0, 2.0, 3.0])
    assert st["median"] == 2.0 and st["mean"] == 2.0
    assert st["cv"] == pytest.approx(1.0 / 2.0)
    assert math.isnan(report.stats([])["median"])
    calls = [
        {"started_ns": 0, "finished_ns": 10},
        {"started_ns": 5, "finished_ns": 15},
        {"started_ns": 10, "finished_ns": 20},  # starts exactly when the first ends
    ]
    assert report.max_concurrency(calls) == 2
    assert report.max_concurrency([]) == 0


def test_summary_speedup_and_rates():
    res = _results()
    summary = report.summarize(res)
    single = summary["series"]["single_cpu:6x10x10x10:r2"]
    multi = summary["series"]["multi_cpu:6x10x10x10:r2"]
    assert single["stats"]["median"] == 3.0 and multi["stats"]["median"] == 1.0
    assert multi["parallel_ideal"] == 2
    assert multi["max_concurrency"] == 2
    gflops = 2 * 6 * 10 * 10 * 10 * 2 / 1.0 / 1e9
    assert multi["gflops"] == pytest.approx(gflops)
    assert multi["fraction_of_inproc"] == pytest.approx(gflops / (12.0 * 2))
    assert summary["modes"]["multi_cpu"]["overhead_us"]["median"] == pytest.approx(300.0)
    table = report.table2(res, summary, with_gpu=False)
    row = next(r for r in table.splitlines() if r.startswith("| [6, 10, 10, 10]"))
    assert "3.00x" in row and "150.0%" in row  # 3.0 s / 1.0 s against an ideal of 2
    table3 = report.table2(res, summary, with_gpu=True)
    assert "no GPU" in table3


def test_discussion_cites_measured_values():
    res = _results()
    summary = report.summarize(res)
    text = report.render_markdown(res, summary, {})
    disc = text.split("## Discussion")[1]
    assert "1.5 s against 1 s bare metal" in disc  # table 1 medians
    assert "+50.0%" in disc
    assert "3.00x at [6, 10, 10, 10]" in disc  # best speedup
    assert "0.500 ms" in disc  # single-CPU overhead per call at the table-1 shape
    # median over all single-CPU calls (500 and 400 us): 450 us; 9x that keeps it under 10%
    assert "0.450 ms" in disc
    assert "4.050 ms" in disc
    assert "no GPU" in disc
    # a change in the data changes the text
    res2 = _results()
    res2["series"][2]["trials"][2]["time_s"] = 5.0
    disc2 = report.render_markdown(res2, report.summarize(res2), {}).split("## Discussion")[1]
    assert "4.00x at [6, 10, 10, 10]" in disc2


def test_write_report_without_plots(tmp_path):
    paths = report.write_report(_results(), tmp_path, plots=False)
    assert json.loads(paths["results"].read_text())["elapsed_s"] == 12.5
    text = paths["report"].read_text()
    assert "## Table 4" in text and "![" not in text
    assert not list(tmp_path.glob("*.png"))


def test_gpu_tables_when_a_gpu_was_measured():
    res = _results(gpus=1)
    summary = report.summarize(res)
    text = report.render_markdown(res, summary, {})
    t3 = text.split("## Table 3")[1].split("## Table 4")[0]
    row = next(r for r in t3.splitlines() if r.startswith("| [6, 10, 10, 10]"))
    assert "| 0.5 |" in row and "no GPU" not in t3
    t4 = text.split("## Table 4")[1].split("\n## ")[0]
    assert "shared device 0" in t4
    runs = [r for r in t4.splitlines() if r.startswith("| [4, 8, 8, 8] |")]
    assert len(runs) == 3 + 1  # every run and the median
    assert "| 0.2 | 0.3 | 0.25 |" in runs[0]
    disc = text.split("## Discussion")[1]
    assert "6.0x" in disc  # single CPU 3.0 s median against GPU 0.5 s
    assert "Two half-batch calls vs one call: 1.20x" in disc  # 0.3 / 0.25
