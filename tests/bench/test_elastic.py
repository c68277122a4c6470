"""hetfaas bench elastic on a short trace: both pools replay the same calls; the elastic one
starts from zero, pays cold starts and uses fewer worker-seconds."""

import pytest

from hetfaas.bench.elastic import arrivals, format_report, parse_trace, run_elastic

from ..conftest import CORES


def test_trace_parsing_and_arrivals():
    phases = parse_trace("1:0,2:R,0.5:10", rate=50.0, scale=2.0)
    assert phases == [(2.0, 0.0), (4.0, 50.0), (1.0, 10.0)]
    times = arrivals(phases, seed=1)
    assert all(2.0 <= t < 7.0 for t in times)  # none in the idle phase
    assert 150 < sum(t < 6.0 for t in times) < 250  # ~50/s over 4 s
    assert times == sorted(times) and times == arrivals(phases, seed=1)
    for bad in ("3", "x:1", "2:-1", "0:1"):
        with pytest.raises(ValueError, match="bad trace phase"):
            parse_trace(bad, 1.0)


@pytest.mark.skipif(CORES < 2, reason="needs two cores")
def test_elastic_against_fixed_on_a_short_trace():
    res = run_elastic("0.5:0,1.5:R,2:0", rate=100.0, work_ms=2.0, workers=2)
    fixed, elastic = res["rows"]
    assert fixed["calls"] == elastic["calls"] > 80
    assert fixed["workers_started"] == 2 and fixed["cold_calls"] == 0  # warm all along
    assert elastic["cold_calls"] >= 1  # it started from zero workers
    assert elastic["timeline"][0][1] == 0 and elastic["timeline"][-1][1] == 0  # to zero again
    assert 3.9 <= fixed["worker_s"] <= 2 * res["rows"][0]["span_s"] + 0.1
    assert elastic["worker_s"] < 0.8 * fixed["worker_s"]
    assert "elastic/fixed worker-seconds" in format_report(res)
