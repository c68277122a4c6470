"""hetfaas.fmi: FMI's Python surface over our channels, against the real servers (redis-server,
SeaweedFS, the rendezvous), with FMI's JSON configuration."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import uuid

import pytest

from hetfaas import fmi
from hetfaas.collectives import model
from hetfaas.exceptions import ConfigurationError, PeerTimeout

from .conftest import S3_KEYS


def write_config(path, backends, figures=None):
    doc = {"backends": backends}
    if figures is not None:
        doc["model"] = figures
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def all_backends(tmp_path, redis_server, s3_server, rendezvous):
    """An FMI configuration with every FMI backend enabled, on the test servers."""
    host, port = rendezvous.uri.removeprefix("tcp://").rsplit(":", 1)
    rhost, rport = redis_server.removeprefix("redis://").split("/")[0].rsplit(":", 1)
    backends = {
        "S3": {"enabled": True, "bucket_name": "fmi-test", "s3_region": "us-east-1",
               "endpoint": s3_server, "access_key_id": S3_KEYS["AWS_ACCESS_KEY_ID"],
               "secret_access_key": S3_KEYS["AWS_SECRET_ACCESS_KEY"], "timeout": 100,
               "max_timeout": 30000},
        "Redis": {"enabled": True, "host": rhost, "port": int(rport), "timeout": 1,
                  "max_timeout": 30000},
        "Direct": {"enabled": True, "host": host, "port": int(port), "max_timeout": 30000},
    }  # fmt: skip
    figures = {  # FMI's published figures (its smi_test.json), prices as FMI's model keys
        "S3": {"bandwidth": 50.0, "overhead": 40.4, "upload_price": 0.000005,
               "download_price": 0.0000004},
        "Redis": {"bandwidth_single": 100.0, "bandwidth_multiple": 400.0, "overhead": 5.2,
                  "instance_price": 0.034},
        "Direct": {"bandwidth": 250.0, "overhead": 0.34, "vm_price": 0.0104},
    }  # fmt: skip
    return write_config(tmp_path / "fmi.json", backends, figures)


def run_peers(n, body):
    results, errors = [None] * n, [None] * n

    def main(i):
        try:
            results[i] = body(i)
        except BaseException as exc:
            errors[i] = exc

    threads = [threading.Thread(target=main, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a peer hung"
    for exc in errors:
        if exc is not None:
            raise exc
    return results


def fmi_client(peer_id, num_peers, config, name, hint):
    """The collectives of FMI's own Python test client, with FMI's argument order."""
    comm = fmi.Communicator(peer_id, num_peers, str(config), name, 512)
    comm.hint(hint)
    t_int, t_dbl = fmi.types(fmi.datatypes.int), fmi.types(fmi.datatypes.double)
    ilist = fmi.types(fmi.datatypes.int_list, 2)
    dlist = fmi.types(fmi.datatypes.double_list, 2)
    custom = fmi.func(fmi.op.custom, lambda a, b: 2 * a + 2 * b, True, True)
    ordered = fmi.func(fmi.op.custom, lambda a, b: 3 * a + b, False, False)
    out = {}
    comm.barrier()
    if peer_id == 0:
        comm.send(42, 1, t_int)
        comm.send([1.32, 2.34], 1, dlist)
    elif peer_id == 1:
        out["recv"] = (comm.recv(0, t_int), comm.recv(0, dlist))
    out["bcast"] = comm.bcast(14.2 if peer_id == 0 else None, 0, t_dbl)
    out["bcast_list"] = comm.bcast([1, 2] if peer_id == 0 else None, 0, ilist)
    out["gather"] = comm.gather([peer_id, 10 * peer_id], 0, ilist)
    out["gather_int"] = comm.gather(peer_id, 0, t_int)
    whole = fmi.types(fmi.datatypes.double_list, 2 * num_peers)
    out["scatter"] = comm.scatter(
        [float(i) for i in range(2 * num_peers)] if peer_id == 0 else None, 0, whole
    )
    out["reduce"] = comm.reduce(peer_id + 1, 0, fmi.func(fmi.op.prod), t_int)
    out["reduce_custom"] = comm.reduce(1, 0, custom, t_int)
    out["allreduce_max"] = comm.allreduce(float(peer_id), fmi.func(fmi.op.max), t_dbl)
    out["allreduce_list"] = comm.allreduce([peer_id, 1], fmi.func(fmi.op.sum), ilist)
    out["allreduce_list_custom"] = comm.allreduce([1, peer_id], custom, ilist)
    out["ordered"] = comm.allreduce(peer_id, ordered, t_int)
    out["scan"] = comm.scan(peer_id, fmi.func(fmi.op.sum), t_int)
    out["scan_min"] = comm.scan([float(-peer_id), 5.0], fmi.func(fmi.op.min), dlist)
    out["channels"] = comm.channels
    comm.close()
    return out


@pytest.mark.parametrize("hint", [fmi.hints.fast, fmi.hints.cheap])
def test_fmi_client_over_every_backend(all_backends, hint):
    p = 3
    name = f"fmi-{uuid.uuid4().hex[:8]}"
    res = run_peers(p, lambda i: fmi_client(i, p, all_backends, name, hint))
    assert res[1]["recv"] == (42, [1.32, 2.34])
    for i, r in enumerate(res):
        assert r["channels"] == ["redis", "s3", "tcp"]
        assert r["bcast"] == 14.2 and r["bcast_list"] == [1, 2]
        assert r["scatter"] == [2.0 * i, 2.0 * i + 1]
        assert r["allreduce_max"] == 2.0
        assert r["allreduce_list"] == [3, 3]
        # 2a+2b over three peers, any order: 2(2*1+2*1)+2*1 = 10 for the first element
        assert r["allreduce_list_custom"] == [10, 2 * (2 * 0 + 2 * 1) + 2 * 2]
        assert r["ordered"] == 3 * (3 * 0 + 1) + 2  # ((0 op 1) op 2), FMI's documented 5
        assert r["scan"] == sum(range(i + 1))
        assert r["scan_min"] == [float(-i), 5.0]
    assert res[0]["gather"] == [0, 0, 1, 10, 2, 20] and res[1]["gather"] == []
    assert res[0]["gather_int"] == [0, 1, 2]
    assert res[0]["reduce"] == 6 and res[1]["reduce"] is None
    assert res[0]["reduce_custom"] == 10


def test_hint_picks_channels_from_the_config_model(all_backends):
    uris, profiles, prices, timeout_s = fmi.load_config(all_backends)
    assert [u.split(":")[0] for u in uris] == ["s3", "redis", "tcp"]
    assert timeout_s == 30.0
    assert profiles["s3"].overhead_s == pytest.approx(40.4e-3)
    assert profiles["redis"].bandwidth_multiple_Bps == pytest.approx(400e6)
    assert prices.s3_put == 0.000005 and prices.vm_hour == 0.0104
    cands = ["s3", "redis", "tcp"]
    assert model.choose(cands, "bcast", 4, 8, "fast", profiles, prices) == "tcp"
    # cheap never costs more than fast (128 MB functions)
    fast = model.estimate("tcp", "bcast", 4, 8, profiles, prices, 0.125)
    best = model.choose(cands, "bcast", 4, 8, "cheap", profiles, prices, 0.125)
    assert model.estimate(best, "bcast", 4, 8, profiles, prices, 0.125).cost_usd <= fast.cost_usd


SCRIPT = """
from hetfaas import fmi   # was: import fmi
import sys

peer_id, config = int(sys.argv[1]), sys.argv[2]
comm = fmi.Communicator(peer_id, 3, config, sys.argv[3])
if peer_id == 0:
    comm.bcast(42, 0, fmi.types(fmi.datatypes.int))
else:
    bc_res = comm.bcast(None, 0, fmi.types(fmi.datatypes.int))
    assert bc_res == 42
sc_res = comm.scatter([0, 1, 2], 0, fmi.types(fmi.datatypes.int_list, 3))
assert sc_res[0] == peer_id
id_sum = comm.allreduce(peer_id, fmi.func(fmi.op.sum), fmi.types(fmi.datatypes.int))
assert id_sum == 3
id_custom = comm.allreduce(peer_id,
             fmi.func(fmi.op.custom, lambda a, b: 3 * a + b, False, False),
             fmi.types(fmi.datatypes.int))
assert id_custom == 5
print("done", peer_id)
"""


def test_an_fmi_script_runs_as_separate_processes(tmp_path, redis_server):
    rhost, rport = redis_server.removeprefix("redis://").split("/")[0].rsplit(":", 1)
    config = write_config(
        tmp_path / "fmi.json",
        {"Redis": {"enabled": True, "host": rhost, "port": int(rport), "max_timeout": 30000},
         "S3": {"enabled": False, "bucket_name": "unused"}},
    )  # fmt: skip
    script = tmp_path / "client.py"
    script.write_text(textwrap.dedent(SCRIPT))
    name = f"script-{uuid.uuid4().hex[:8]}"
    procs = [
        subprocess.Popen([sys.executable, str(script), str(i), str(config), name],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(3)
    ]  # fmt: skip
    outs = [p.communicate(timeout=90) for p in procs]
    for i, (p, (out, err)) in enumerate(zip(procs, outs, strict=True)):
        assert p.returncode == 0, err
        assert out.strip() == f"done {i}"


def test_absent_peer_times_out_with_fmi_max_timeout(tmp_path):
    config = write_config(
        tmp_path / "fmi.json",
        {"File": {"enabled": True, "path": str(tmp_path / "store"), "max_timeout": 500}},
    )
    comm = fmi.Communicator(0, 2, config, "alone", 128)
    with pytest.raises(PeerTimeout) as info:
        comm.bcast(1, 0, fmi.types(fmi.datatypes.int))
        comm.barrier()
    assert info.value.missing == [1]
    comm.close()


@pytest.mark.parametrize(
    "doc, match",
    [
        ("{", "not JSON"),
        ({"model": {}}, "no 'backends'"),
        ({"backends": {"S3": {"enabled": False, "bucket_name": "b"}}}, "every backend"),
        ({"backends": {"Kafka": {"enabled": True}}}, "unknown backend 'Kafka'"),
        ({"backends": {"S3": {"enabled": True}}}, "lacks 'bucket_name'"),
        ({"backends": {"Redis": {"port": "x"}}}, "backend Redis"),
        ({"backends": {"Redis": {}}, "model": {"Redis": {"overhead": "slow"}}}, "bad 'model'"),
        ({"backends": {"Redis": {}}, "model": {"Kafka": {}}}, "unknown backend"),
    ],
)
def test_bad_configs_are_named(tmp_path, doc, match):
    path = tmp_path / "fmi.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(ConfigurationError, match=match):
        fmi.load_config(path)
    with pytest.raises(ConfigurationError, match="does not exist"):
        fmi.load_config(tmp_path / "missing.json")


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: fmi.types("int"), "fmi.datatypes member"),
        (lambda: fmi.types(fmi.datatypes.int_list), "needs a length"),
        (lambda: fmi.types(fmi.datatypes.int_list, -1), "list length"),
        (lambda: fmi.types(fmi.datatypes.int).check(1.5), "holds ints"),
        (lambda: fmi.types(fmi.datatypes.double).check("x"), "holds floats"),
        (lambda: fmi.types(fmi.datatypes.int_list, 2).check([1]), "needs 2 elements"),
        (lambda: fmi.types(fmi.datatypes.int_list, 2).check(3), "needs a list"),
        (lambda: fmi.func("sum"), "fmi.op member"),
        (lambda: fmi.func(fmi.op.custom), "needs fn"),
        (lambda: fmi.func(fmi.op.sum, max), "takes no function"),
    ],
)
def test_bad_types_and_funcs(call, match):
    with pytest.raises(ConfigurationError, match=match):
        call()


def test_scatter_checks_fmi_rules(tmp_path):
    config = write_config(tmp_path / "fmi.json", {"File": {"path": str(tmp_path / "s")}})
    with fmi.Communicator(0, 1, config, "solo") as comm:
        assert comm.scatter([1, 2], 0, fmi.types(fmi.datatypes.int_list, 2)) == [1, 2]
        with pytest.raises(ConfigurationError, match="list type"):
            comm.scatter(1, 0, fmi.types(fmi.datatypes.int))
        with pytest.raises(ConfigurationError, match="faas_memory"):
            fmi.Communicator(0, 1, config, "solo2", faas_memory=0)
        comm.hint("cheap")
        with pytest.raises(ConfigurationError, match="unknown hint"):
            comm.hint("slow")
