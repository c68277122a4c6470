"""The overhead benchmark's pieces, on a few calls."""

import pytest

from hetfaas.bench import overhead


def test_pipe_and_pool_rows_are_measured():
    pipe = overhead.bench_pipe(50)
    assert 0 < pipe["p50_us"] <= pipe["p99_us"]
    row, ex = overhead.bench_hetfaas(50, 200, 2000)
    try:
        assert 0 < row["p50_us"] <= row["p99_us"]
        assert row["calls_per_s"] > 0 and row["map_calls_per_s"] > 0
        tensor = overhead.bench_tensor(ex, 8, 3)
    finally:
        ex.shutdown()
    assert tensor["copy_100mb_ms"] > 0 and tensor["tensor_100mb_ms"] > 0
    assert tensor["tensor_100mb_shared_ms"] < tensor["tensor_100mb_ms"]


def test_table_reports_targets():
    res = {
        "rows": [
            {"name": "a", "p50_us": 1.0, "p99_us": 2.0, "calls_per_s": 3.0, "map_calls_per_s": None}
        ],
        "tensor_100mb_ms": 10.0,
        "copy_100mb_ms": 8.0,
        "tensor_100mb_shared_ms": 0.1,
        "ratios": {"tensor_vs_copy": 1.25, "p50_vs_pipe": 1.0, "ppe_p50_vs_ours": 3.0},
        "targets": {"x": True, "y": False},
    }
    text = overhead.format_table(res)
    assert "x: met" in text and "y: MISSED" in text and "1.25" in text


@pytest.mark.parametrize("argv", [["bench", "overhead", "--help"], ["bench", "bmm", "--help"]])
def test_cli_parses(argv):
    from hetfaas import cli

    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 0
