"""Prometheus metrics of calls and of a real local pool, scraped over HTTP."""

import re
import urllib.request

import pytest

from . import pool_funcs as fx

pytest.importorskip("prometheus_client")
from hetfaas.metrics import Metrics


def value(text: str, series: str) -> float:
    m = re.search(rf"^{re.escape(series)} (\S+)$", text, flags=re.M)
    assert m, f"{series} not in:\n{text}"
    return float(m.group(1))


def test_calls_phases_usage_and_pool_gauges_over_http(ex):
    metrics = Metrics()
    metrics.track(ex)
    futs = [ex.submit(fx.add, i, i) for i in range(3)]
    futs.append(ex.submit(fx.boom, "x"))
    futs.append(ex.submit(fx.burn_and_hold, 0.05, 20))
    metrics.observe_all(futs)
    for f in futs:
        f.exception()
    port = metrics.serve(0)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert value(text, 'hetfaas_calls_total{backend="local",state="COMPLETED"}') == 4
    assert value(text, 'hetfaas_calls_total{backend="local",state="FAILED"}') == 1
    count = 'hetfaas_call_phase_seconds_count{backend="local",phase="compute"}'
    assert value(text, count) == 5
    total = value(text, 'hetfaas_call_phase_seconds_sum{backend="local",phase="total"}')
    assert total >= 0.05  # the burn's 50 ms of CPU at least
    assert value(text, 'hetfaas_call_cpu_seconds_count{backend="local"}') >= 1
    assert value(text, 'hetfaas_call_peak_rss_bytes{backend="local"}') >= 20 * 2**20
    assert value(text, 'hetfaas_calls_now{backend="local",where="queued"}') == 0
    workers = sum(
        value(text, f'hetfaas_workers{{backend="local",state="{s}"}}')
        for s in ("idle", "busy", "starting")
    )
    assert 1 <= workers <= len(ex.backend.worker_pids())


def test_a_cancelled_call_is_counted_as_such(ex):
    metrics = Metrics()
    blocker = [ex.submit(fx.sleepy, 1.0) for _ in range(8)]
    queued = ex.submit(fx.add, 1, 1)
    assert queued.cancel()
    metrics.observe(queued)
    assert value(metrics.text(), 'hetfaas_calls_total{backend="unknown",state="CANCELLED"}') == 1
    for f in blocker:
        f.cancel()
