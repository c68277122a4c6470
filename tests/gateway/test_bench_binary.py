"""``hetfaas bench gateway --binary-mb``: small, end to end (its own servers): every path's
call saw the whole array (the bench checks each result against the array's own checksum)."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")

from hetfaas.bench.gateway_binary import format_table, run_binary_bench


@pytest.mark.timeout(180)
def test_binary_bench_moves_the_array_through_every_path():
    res = run_binary_bench(2.0, repeats=1)
    assert res["bytes"] == 2_000_000
    for key in ("copy_s", "local_s", "drain_s", "gateway_raw_s", "gateway_npy_s"):
        assert res[key] > 0, key
    # the gateway path includes the HTTP floor's transfer: it cannot be cheaper than the route
    # that only reads the body (allowing for noise on a shared machine)
    assert res["gateway_raw_s"] > 0.5 * res["drain_s"]
    table = format_table(res)
    assert "gateway blocking invoke, .npy" in table and "/ one copy" in table
