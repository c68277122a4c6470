"""``hetfaas bench gateway`` runs end to end (tiny counts; the figures themselves are the
benchmark's, not a test's)."""

from __future__ import annotations

import argparse

from hetfaas.bench import gateway as bench


def test_the_gateway_benchmark_measures_every_path_in_one_run(capsys):
    res = bench.run_gateway_bench(calls=30, clients=4, seconds=0.3, batch=20, batches=1)
    thread = res["thread"]  # the same gateway with --thread-delivery, in the same run
    for row in (res["local"], res["echo"], res["gateway"], thread["gateway"]):
        assert 0 < row["p50_us"] <= row["p99_us"], row
    for ld in (res["echo_load"], res["gateway_load"], thread["gateway_load"]):
        assert ld["requests"] > 0 and ld["non_200"] == 0, ld
    assert res["batch"]["items_per_s"] > 0 and thread["batch"]["items_per_s"] > 0
    text = bench.format_table(res)
    assert "bare FastAPI echo route" in text and "items/s" in text
    assert "the same, --thread-delivery" in text
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--quick", "--calls", "50"])
    assert (args.quick, args.calls, args.clients) == (True, 50, 32)
