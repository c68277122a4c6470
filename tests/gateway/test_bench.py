"""``hetfaas bench gateway`` runs end to end (tiny counts; the figures themselves are the
benchmark's, not a test's)."""

from __future__ import annotations

import argparse

from hetfaas.bench import gateway as bench


def test_the_gateway_benchmark_measures_every_path_in_one_run(capsys):
    res = bench.run_gateway_bench(calls=30, clients=4, seconds=0.3, batch=20, batches=1)
    for key in ("local", "echo", "gateway"):
        assert 0 < res[key]["p50_us"] <= res[key]["p99_us"], key
    for key in ("echo_load", "gateway_load"):
        assert res[key]["requests"] > 0 and res[key]["non_200"] == 0, res[key]
    assert res["batch"]["items_per_s"] > 0
    assert (
        res["ratios"]["gateway_over_local_p50"] == res["gateway"]["p50_us"] / res["local"]["p50_us"]
    )
    text = bench.format_table(res)
    assert "bare FastAPI echo route" in text and "items/s" in text
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--quick", "--calls", "50"])
    assert (args.quick, args.calls, args.clients) == (True, 50, 32)
