"""GET /metrics: the gateway's invocations by function and state, the executor's phases and
workers, in Prometheus' text format; behind a token like every route but health."""

from __future__ import annotations

import re

import httpx


def _value(text: str, series: str) -> float:
    m = re.search(rf"^{re.escape(series)} ([0-9.e+-]+)$", text, re.M)
    assert m, f"{series} not in /metrics"
    return float(m.group(1))


def test_metrics_count_invocations_phases_and_workers(gateway):
    t = gateway.tenant()
    t.deploy("add")
    for i in range(3):
        resp = t.http.post("/v1/functions/add/invoke?wait=30", json={"args": [i, 1]})
        assert resp.status_code == 200 and resp.json()["state"] == "COMPLETED"
    resp = t.http.post("/v1/functions/add/invoke?wait=30", json={"args": [1, "x"]})
    assert resp.json()["state"] == "FAILED"  # int + str raises in the function
    assert httpx.get(gateway.url + "/metrics").status_code == 401
    text = t.http.get("/metrics").text
    series = f'hetfaas_gateway_invocations_total{{function="add",namespace="{t.namespace}",'
    assert _value(text, series + 'state="COMPLETED"}') >= 3
    assert _value(text, series + 'state="FAILED"}') >= 1
    assert _value(text, 'hetfaas_call_phase_seconds_count{backend="local",phase="compute"}') >= 4
    assert 'hetfaas_gateway_pending_invocations{where="queued"}' in text
    assert re.search(r'^hetfaas_workers\{backend="local",state="idle"\} [0-9.]+$', text, re.M)
