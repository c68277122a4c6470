"""The latency/cost model and the fast/cheap choice: pure, no server."""

import json

import pytest

from hetfaas.collectives import model
from hetfaas.collectives.model import ChannelProfile, Prices
from hetfaas.exceptions import ConfigurationError

PROFILES = {
    "tcp": ChannelProfile(100e-6, 1e9),
    "mpi": ChannelProfile(20e-6, 1e9),
    "redis": ChannelProfile(1e-3, 0.5e9, 1e9),
    "s3": ChannelProfile(20e-3, 0.1e9, 0.2e9),
    "file": ChannelProfile(0.5e-3, 1e9),
}


def test_one_message_is_overhead_plus_bytes_over_bandwidth():
    t = model.op_time("send", 2, 1e6, PROFILES["tcp"], "direct")
    assert t == pytest.approx(100e-6 + 1e-3)


def test_tree_operations_grow_with_log_peers():
    prof = PROFILES["tcp"]
    t2, t4, t8 = (model.op_time("bcast", p, 8, prof, "direct") for p in (2, 4, 8))
    assert t4 == pytest.approx(2 * t2) and t8 == pytest.approx(3 * t2)
    assert model.op_time("bcast", 1, 8, prof, "direct") == 0


def test_allreduce_takes_the_ring_for_large_messages_and_doubling_for_small():
    prof = PROFILES["tcp"]
    small = model.op_time("allreduce", 4, 8, prof, "direct")
    assert small == pytest.approx(2 * prof.message_s(8))
    big = 64 * 2**20
    ring = 2 * 3 * prof.message_s(big / 4)
    assert model.op_time("allreduce", 4, big, prof, "direct") == pytest.approx(ring)
    # a non-power of two costs two more exchange steps than floor(log2 P)
    assert model.op_time("allreduce", 3, 8, prof, "direct") == pytest.approx(3 * prof.message_s(8))


def test_mediated_fetches_serialize_at_one_reader():
    prof = PROFILES["redis"]
    t2 = model.op_time("gather", 2, 1000, prof, "mediated")
    t8 = model.op_time("gather", 8, 1000, prof, "mediated")
    assert t8 > t2 * 3


def test_costs_count_requests_and_server_time():
    prices = Prices()
    s3 = model.estimate("s3", "bcast", 4, 1000, PROFILES, prices, memory_gb=2.0)
    assert (s3.puts, s3.gets) == (1, 3)
    compute = 4 * s3.time_s * 2.0 * prices.gb_second
    assert s3.cost_usd == pytest.approx(compute + prices.s3_put + 3 * prices.s3_get)
    redis = model.estimate("redis", "bcast", 4, 1000, PROFILES, prices, memory_gb=2.0)
    expected = 4 * redis.time_s * 2.0 * prices.gb_second
    expected += redis.time_s / 3600 * prices.redis_instance_hour
    assert redis.cost_usd == pytest.approx(expected)


def test_fast_picks_the_quickest_and_cheap_the_least_costly():
    cands = ["redis", "s3", "tcp"]
    assert model.choose(cands, "allreduce", 4, 8, "fast", PROFILES) == "tcp"
    # a rendezvous VM that costs a fortune per hour makes direct TCP the expensive one
    prices = Prices(vm_hour=1e6, redis_instance_hour=1e6, gb_second=1e-12)
    assert model.choose(cands, "allreduce", 4, 8, "cheap", PROFILES, prices) == "s3"
    assert model.choose(cands, "allreduce", 4, 8, "fast", PROFILES, prices) == "tcp"


def test_choice_respects_channel_limits():
    limits = {"tcp": 100}
    assert model.choose(["tcp", "redis"], "send", 2, 1000, "fast", PROFILES, limits=limits) == (
        "redis"
    )
    with pytest.raises(ConfigurationError, match="no candidate"):
        model.choose(["tcp"], "send", 2, 1000, "fast", PROFILES, limits=limits)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: model.choose(["tcp"], "send", 2, 8, "quick", PROFILES), "unknown hint"),
        (lambda: model.op_time("alltoall", 2, 8, PROFILES["tcp"], "direct"), "unknown operation"),
        (lambda: model.op_time("send", 0, 8, PROFILES["tcp"], "direct"), "peers"),
        (lambda: model.estimate("carrier-pigeon", "send", 2, 8, PROFILES), "no model"),
        (lambda: ChannelProfile(-1.0, 1e9), "overhead_s"),
        (lambda: ChannelProfile(1e-3, 0), "bandwidth_Bps"),
        (lambda: Prices(s3_put=-1), "s3_put"),
        (lambda: model.ChannelSelector({}, "fast", PROFILES), "at least one"),
        (lambda: model.ChannelSelector({"x": 1}, "fast", PROFILES), "no model"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, match):
    with pytest.raises(ConfigurationError, match=match):
        call()


def test_selector_returns_the_callers_channel_object():
    chans = {"tcp": object(), "s3": object()}
    sel = model.ChannelSelector(chans, "fast", PROFILES)
    assert sel.select("bcast", 4, 8) is chans["tcp"]
    cheap = model.ChannelSelector(chans, "cheap", PROFILES, Prices(vm_hour=1e6, gb_second=0))
    assert cheap.scheme_for("bcast", 4, 8) == "s3"


def test_fit_recovers_overhead_and_bandwidth():
    o, bw = 2e-4, 5e8
    samples = [(b, o + b / bw) for b in (8, 1024, 2**20, 16 * 2**20)]
    prof = model.fit_profile(samples)
    assert prof.overhead_s == pytest.approx(o, rel=1e-6)
    assert prof.bandwidth_Bps == pytest.approx(bw, rel=1e-6)
    with pytest.raises(ConfigurationError, match="two message sizes"):
        model.fit_profile([(8, 1.0), (8, 2.0)])


def test_calibration_file_round_trip(tmp_path, monkeypatch):
    path = tmp_path / "model.json"
    monkeypatch.setenv("HETFAAS_COLLECTIVES_MODEL", str(path))
    assert model.load_profiles() == model.DEFAULT_PROFILES  # nothing calibrated yet
    mine = {"redis": ChannelProfile(7e-4, 3e8, 6e8, "calibrated")}
    assert model.save_profiles(mine, machine={"cpus": 2}) == path
    loaded = model.load_profiles()
    assert loaded["redis"] == mine["redis"]
    assert loaded["tcp"] == model.DEFAULT_PROFILES["tcp"]
    assert json.loads(path.read_text())["machine"] == {"cpus": 2}
    path.write_text("{not json")
    with pytest.raises(ConfigurationError, match="not a collectives calibration"):
        model.load_profiles()
    with pytest.raises(ConfigurationError, match="no calibration file"):
        model.load_profiles(tmp_path / "missing.json")


def test_run_cost_adds_functions_storage_and_servers():
    prices = Prices()
    s3 = model.run_cost("s3", 4, 10.0, {"allreduce": 10, "bcast": 1}, prices, memory_gb=1.0)
    puts = 10 * 4 + 1
    gets = 10 * 6 + 3
    assert s3["storage"] == pytest.approx(puts * prices.s3_put + gets * prices.s3_get)
    assert s3["compute"] == pytest.approx(4 * 10.0 * prices.gb_second + 4 * prices.function_request)
    assert s3["total"] == pytest.approx(s3["compute"] + s3["storage"])
    tcp = model.run_cost("tcp", 4, 3600.0, {"allreduce": 1}, prices)
    assert tcp["server"] == pytest.approx(prices.vm_hour) and tcp["storage"] == 0
    with pytest.raises(ConfigurationError, match="no model"):
        model.run_cost("pigeon", 2, 1.0, {})


def test_request_counts_follow_the_mediated_algorithms():
    # allreduce: P-1 uploads for rank 0, its result once; P-1 fetches each way
    assert model.op_requests("allreduce", 4) == (4, 6)
    # scan: rank r's value is read by the ranks after it (the last uploads nothing)
    assert model.op_requests("scan", 4) == (3, 6)
    assert model.op_requests("barrier", 4) == (4, 6)
    assert model.op_requests("bcast", 1) == (0, 0)
