"""hetfaas.client against a real gateway: the same code as with an Executor's futures."""

from __future__ import annotations

import concurrent.futures as cf

import pytest

import hetfaas
from hetfaas.client import Client, RemoteFuture
from hetfaas.gateway import BodyTooLarge, Forbidden, NotFound, Unauthorized


@pytest.fixture
def client(gateway):
    t = gateway.tenant()
    with Client(gateway.url, t.token) as c:
        yield c


def test_submit_result_and_the_fields_of_a_local_future(client):
    client.deploy("tests.gateway.funcs:add")
    fut = client.submit("add", 2, b=3)
    assert isinstance(fut, RemoteFuture) and isinstance(fut, cf.Future)
    assert fut.result(timeout=30) == 5
    assert fut.done() and not fut.cancelled() and fut.exception() is None
    assert fut.state is hetfaas.State.COMPLETED and fut.attempts == 1
    assert isinstance(fut.timings, hetfaas.Timings) and fut.timings.total_us > 0
    assert fut.usage["cpus"] == 1
    assert client.invocation(fut.invocation_id)["result"] == 5
    assert client.call("add", 1, 1) == 2


def test_a_remote_exception_is_raised_with_its_type_and_traceback(client):
    client.deploy("tests.gateway.funcs:fail")
    fut = client.submit("fail", "broken")
    with pytest.raises(ValueError, match="broken") as info:
        fut.result(timeout=30)
    assert "raise ValueError(message)" in str(info.value.__cause__)
    assert fut.state is hetfaas.State.FAILED
    assert isinstance(fut.exception(), ValueError)


def test_map_and_as_completed_as_with_an_executor(client):
    client.deploy("tests.gateway.funcs:add")
    assert list(client.map("add", range(30), range(30))) == [2 * i for i in range(30)]
    futs = [client.submit("add", i) for i in range(10)]
    assert sorted(f.result() for f in cf.as_completed(futs, timeout=30)) == list(range(10))
    done, not_done = cf.wait(futs, timeout=30)
    assert len(done) == 10 and not not_done


def test_cancel_a_running_remote_call(client):
    client.deploy("tests.gateway.funcs:sleep")
    fut = client.submit("sleep", 30)
    assert fut.cancel() is True
    assert fut.cancelled() and fut.state is hetfaas.State.CANCELLED
    with pytest.raises(hetfaas.CallCancelled):
        fut.result()
    done = client.submit("sleep", 0)
    done.result(timeout=30)
    assert done.cancel() is False


def test_gateway_refusals_raise_the_gateway_errors(gateway, client):
    with pytest.raises(Forbidden):
        client.deploy("os:system")
    with pytest.raises(NotFound):
        client.submit("nothing", 1)
    with pytest.raises(Unauthorized), Client(gateway.url, "hft_bad") as bad:
        bad.functions()
    t = gateway.tenant(max_body_bytes=500)
    with Client(gateway.url, t.token) as small:
        small.deploy("tests.gateway.funcs:noop")
        with pytest.raises(BodyTooLarge, match="500 bytes"):
            small.submit("noop", "x" * 1000)


def test_a_rate_limited_client_waits_and_goes_on(gateway):
    t = gateway.tenant(rate_per_s=20)
    with Client(gateway.url, t.token) as c:
        c.deploy("tests.gateway.funcs:noop")
        assert [c.call("noop", i) for i in range(30)] == list(range(30))  # past the burst
