"""Failed tokens limited per client address (gateway/auth.py): the bucket as a pure function
of time, then a real gateway over real TCP from two loopback addresses."""

import httpx
import pytest

from hetfaas.gateway.auth import FailureLimiter, RateLimiter

from .conftest import own_gateway


def test_a_burst_of_failures_then_a_steady_rate_per_address():
    lim = FailureLimiter(per_min=6)  # burst 12, then one every 10 s
    for _ in range(12):
        assert lim.wait("a", now=100.0) == 0.0
        lim.fail("a", now=100.0)
    assert lim.wait("a", now=100.0) == pytest.approx(10.0)
    assert lim.wait("b", now=100.0) == 0.0  # per address
    assert lim.wait("a", now=105.0) == pytest.approx(5.0)
    assert lim.wait("a", now=110.0) == 0.0  # one more try, 10 s on
    lim.fail("a", now=110.0)
    assert lim.wait("a", now=110.0) == pytest.approx(10.0)
    assert lim.wait("a", now=1000.0) == 0.0  # refilled, never above the burst
    for _ in range(12):
        lim.fail("a", now=1000.0)
    assert lim.wait("a", now=1000.0) > 0
    with pytest.raises(ValueError):
        FailureLimiter(per_min=0)


def test_only_so_many_addresses_are_kept():
    lim = FailureLimiter(per_min=1, size=3)
    for key in "abcd":
        lim.fail(key, now=0.0)
        lim.fail(key, now=0.0)
    assert lim.wait("a", now=0.0) == 0.0  # forgotten (the oldest): a fresh bucket
    assert lim.wait("d", now=0.0) == pytest.approx(60.0)  # kept: its burst of 2 is spent
    assert len(lim) == 3


def test_a_token_rate_allows_one_seconds_worth_then_refills_at_its_rate():
    lim = RateLimiter(size=2)
    assert [lim.take("t", rate=4, now=0.0) for _ in range(4)] == [0.0] * 4
    assert lim.take("t", rate=4, now=0.0) == pytest.approx(0.25)  # one request in 1/4 s
    assert lim.take("t", rate=4, now=0.1) == pytest.approx(0.15)  # a refusal takes nothing
    assert lim.take("t", rate=4, now=0.25) == 0.0
    assert lim.take("slow", rate=0.5, now=0.0) == 0.0  # a burst of at least one request
    assert lim.take("slow", rate=0.5, now=1.0) == pytest.approx(1.0)
    assert lim.take("u", rate=4, now=0.3) == 0.0  # a third token: "t" is forgotten
    assert [lim.take("t", rate=4, now=0.3) for _ in range(4)] == [0.0] * 4


def _client(url, source, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url, headers=headers, timeout=30,
                        transport=httpx.HTTPTransport(local_address=source))  # fmt: skip


def test_an_address_that_sends_bad_tokens_is_stopped_before_they_are_checked(tmp_path):
    with own_gateway(tmp_path / "gateway.db", failed_tokens_per_min=3) as gw:  # a burst of 6
        url, store = gw.url, gw.store
        _, good = store.create_token("team")
        _, fresh = store.create_token("team")
        with _client(url, "127.0.0.1", good) as ok:
            assert ok.get("/v1/functions").status_code == 200  # verified: cached from now
        bad = _client(url, "127.0.0.1", "hft_000000000000_not-a-token")
        codes = [bad.get("/v1/functions").status_code for _ in range(7)]
        assert codes == [401] * 6 + [429]
        resp = bad.get("/v1/functions")
        assert resp.status_code == 429 and int(resp.headers["retry-after"]) >= 1
        body = resp.json()
        assert body["error"] == "too_many_failed_tokens" and "127.0.0.1" in body["detail"]
        assert 15 <= body["retry_after_s"] <= 20  # one failure's worth at 3/min
        with _client(url, "127.0.0.1", good) as ok:  # a known token, same address: passes
            assert ok.get("/v1/functions").status_code == 200
        with _client(url, "127.0.0.1", fresh) as new:  # one not yet verified waits too
            assert new.get("/v1/functions").status_code == 429
        with _client(url, "127.0.0.2", fresh) as other:  # another address is not held back
            assert other.get("/v1/functions").status_code == 200
        with _client(url, "127.0.0.2", "hft_000000000000_not-a-token") as other:
            assert other.get("/v1/functions").status_code == 401
        assert httpx.get(f"{url}/healthz").status_code == 200  # health needs no token
        bad.close()
