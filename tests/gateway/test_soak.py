"""``hetfaas bench gateway --soak`` end to end at a small size: concurrent clients on a real
gateway (``hetfaas serve`` in its own process), then every invocation they were given an id
for found in the store, ended, with its own result. The figures are the benchmark's."""

from __future__ import annotations

import argparse
import json

import pytest

from hetfaas.bench import gateway as bench
from hetfaas.bench import gateway_soak as soak

pytest.importorskip("fastapi")


@pytest.mark.timeout(120)
def test_a_short_soak_has_no_5xx_and_loses_no_invocation(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(
        ["--soak", "--clients", "20", "--duration", "3", "--out", str(tmp_path), "--json"]
    )
    assert bench.run(args) == 0
    res = json.loads(capsys.readouterr().out)
    assert res == json.loads((tmp_path / "gateway_soak.json").read_text())
    assert res["clients"] == 20 and res["duration_s"] == 3
    assert res["http_5xx"] == 0 and res["http_other"] == 0 and res["no_answer"] == {}
    acc = res["accounting"]
    assert acc["accepted"] > 100, acc  # 20 clients for 3 s: hundreds of calls
    assert acc["lost"] == acc["not_final"] == acc["wrong"] == 0, acc
    assert acc["completed_right"] == acc["accepted"]
    assert acc["store_records"] == acc["accepted"] + 2  # and the two warm-up calls
    assert acc["not_acknowledged"] == 0 and res["wrong_in_response"] == 0
    assert res["not_ended_after_drain"] == 0 and res["ok"] is True
    kinds = res["kinds"]
    for kind in ("invoke_noop", "invoke_nap", "async_accept", "async_fetch"):
        assert kinds[kind]["n"] > 0 and 0 < kinds[kind]["p50_ms"] <= kinds[kind]["p99_ms"], kind
    assert kinds["async_accept"]["n"] == kinds["async_fetch"]["n"]  # each 202 fetched once
    assert res["blocking"]["n"] == kinds["invoke_noop"]["n"] + kinds["invoke_nap"]["n"]
    assert res["requests"] == sum(res["status"].values())
    text = soak.format_table(res)
    assert "zero 5xx, zero lost" in text and "p99 ms" in text


def test_the_soak_defaults_to_200_clients_for_60_s():
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--soak"])
    assert args.soak and args.duration == 60.0 and "clients" not in args.given
    args = parser.parse_args(["--soak", "--clients", "7"])
    assert args.clients == 7 and "clients" in args.given
    args = parser.parse_args([])  # the other modes keep their own default
    assert args.clients == 32 and not args.soak
