"""Where callbacks may go (gateway/callbacks.py): the rules as pure decisions, then real POSTs
to real local HTTP servers (a redirect is not followed, a refused host is never reached), and
through a real gateway started with ``callback_allow``."""

import contextlib
import http.server
import ipaddress
import threading
import time

import pytest

from hetfaas.exceptions import ConfigurationError
from hetfaas.gateway.callbacks import CallbackPolicy, post_json
from hetfaas.gateway.errors import BadInput, CallbackRefused

from .conftest import own_gateway

ip = ipaddress.ip_address


def test_without_a_list_anywhere_but_link_local_and_multicast():
    p = CallbackPolicy()
    assert p.refuses("hooks.example.org", [ip("93.184.216.34")]) is None
    assert p.refuses("localhost", [ip("127.0.0.1"), ip("::1")]) is None
    assert p.refuses("db.lan", [ip("10.1.2.3")]) is None
    for bad in ("169.254.169.254", "fe80::1", "0.0.0.0", "224.0.0.1", "255.255.255.255"):
        assert "never reach" in p.refuses("metadata.internal", [ip(bad)]), bad
    # every address a name resolves to must be allowed
    assert p.refuses("two.example", [ip("10.0.0.1"), ip("169.254.169.254")])
    assert "no address" in p.refuses("none.example", [])


def test_a_list_admits_its_names_and_networks_only():
    p = CallbackPolicy.parse(["hooks.example.org", "*.ci.example.org", "10.0.0.0/8", "::1"])
    assert p.restricted
    assert p.refuses("hooks.example.org", [ip("93.184.216.34")]) is None
    assert p.refuses("HOOKS.example.org.", [ip("93.184.216.34")]) is None
    assert p.refuses("a.ci.example.org", [ip("93.184.216.35")]) is None
    assert p.refuses("anything.lan", [ip("10.9.9.9")]) is None  # resolves into a network
    assert p.refuses("localhost", [ip("::1")]) is None
    assert "not in --callback-allow" in p.refuses("evil.example", [ip("93.184.216.36")])
    assert "not in --callback-allow" in p.refuses("localhost", [ip("127.0.0.1")])
    # a name admitted by pattern still never reaches metadata; a network naming it does
    assert "never reach" in p.refuses("hooks.example.org", [ip("169.254.169.254")])
    assert CallbackPolicy.parse(["169.254.0.0/16"]).refuses("m", [ip("169.254.169.254")]) is None


def test_ipv4_mapped_addresses_are_judged_as_ipv4():
    from hetfaas.gateway.callbacks import _address

    assert _address("::ffff:169.254.169.254") == ip("169.254.169.254")
    assert _address("fe80::1%eth0") == ip("fe80::1")
    with pytest.raises(BadInput, match="never reach"):
        CallbackPolicy().check_url("http://[::ffff:169.254.169.254]/latest/meta-data")


def test_urls_are_checked_when_the_call_is_accepted():
    p = CallbackPolicy()
    p.check_url(None)
    p.check_url("https://hooks.example.org:8443/done?x=1")
    for bad, why in [
        ("file:///etc/passwd", "http"),
        ("ftp://example.org/", "http"),
        ("http://", "no host"),
        ("http://example.org:99999/", "not a URL"),
        ("http://169.254.169.254/latest/meta-data/", "never reach"),
        (7, "http"),
    ]:
        with pytest.raises(BadInput, match=why):
            p.check_url(bad)
    names = CallbackPolicy.parse(["hooks.example.org"])
    names.check_url("http://hooks.example.org/")
    with pytest.raises(BadInput, match="not in the gateway's --callback-allow"):
        names.check_url("http://other.example.org/")
    with pytest.raises(BadInput, match="not in --callback-allow"):
        names.check_url("http://127.0.0.1:8000/")
    # with a network in the list, a name may resolve into it: judged at delivery
    CallbackPolicy.parse(["10.0.0.0/8"]).check_url("http://hooks.lan/")


def test_bad_entries_are_refused_at_start():
    for bad in ("", "http://x", "a b", "10.0.0.0/33", "exa mple.org", "host:80"):
        with pytest.raises(ConfigurationError, match="callback-allow"):
            CallbackPolicy.parse([bad])


class _Hook(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []
    redirect_to = ""

    def do_POST(self):
        type(self).hits.append(self.path)
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.path.startswith("/go") and self.redirect_to:
            self.send_response(307)
            self.send_header("Location", self.redirect_to)
        else:
            self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def hook():
    _Hook.hits = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_post_is_made_a_redirect_is_not_followed_and_a_refused_host_not_reached(hook):
    assert post_json(f"{hook}/done?x=1", b"{}", 5, CallbackPolicy()) == 204
    assert post_json(hook.replace("127.0.0.1", "localhost") + "/l", b"{}", 5,
                     CallbackPolicy()) == 204  # fmt: skip
    _Hook.redirect_to = f"{hook}/internal"
    assert post_json(f"{hook}/go", b"{}", 5, CallbackPolicy()) == 307
    with pytest.raises(CallbackRefused, match="not in --callback-allow"):
        post_json(f"{hook}/refused", b"{}", 5, CallbackPolicy.parse(["10.0.0.0/8"]))
    assert _Hook.hits == ["/done?x=1", "/l", "/go"]  # never /internal, never /refused


@contextlib.contextmanager
def _gateway(tmp_path, allow):
    with own_gateway(tmp_path / "gateway.db", callback_allow=allow) as gw:
        t = gw.tenant()
        t.deploy("add")
        yield t


def test_a_gateway_with_a_list_refuses_at_accept_and_delivers_where_it_says(tmp_path, hook):
    with _gateway(tmp_path, ["hooks.example.org", "localhost"]) as t:
        resp = t.http.post("/v1/functions/add/async",
                           json={"args": [1, 2], "callback_url": f"{hook}/x"})  # fmt: skip
        assert resp.status_code == 422 and "callback-allow" in resp.text  # 127.0.0.1: unlisted
        batch = {"inputs": [{"args": [1, 2]}], "callback_url": f"{hook}/x"}
        resp = t.http.post("/v1/functions/add/batch", json=batch)
        assert resp.status_code == 422
        # localhost is listed by name, and resolves to loopback: delivered
        url = hook.replace("127.0.0.1", "localhost") + "/ok"
        ok = t.http.post("/v1/functions/add/async", json={"args": [1, 2], "callback_url": url})
        assert ok.status_code == 202
        rec = _delivered(t, ok.json()["id"])
        assert rec["callback"]["state"] == "delivered" and rec["callback"]["status"] == 204
        assert _Hook.hits == ["/ok"]


def test_a_name_that_resolves_outside_the_list_is_refused_at_delivery(tmp_path, hook):
    with _gateway(tmp_path, ["10.0.0.0/8"]) as t:
        url = hook.replace("127.0.0.1", "localhost") + "/no"  # a name: judged at delivery
        resp = t.http.post("/v1/functions/add/async", json={"args": [1, 2], "callback_url": url})
        assert resp.status_code == 202
        rec = _delivered(t, resp.json()["id"])
        assert rec["state"] == "COMPLETED" and rec["result"] == 3  # the call itself ran
        cb = rec["callback"]
        assert cb["state"] == "refused" and cb["attempts"] == 1 and "not in" in cb["error"]
        assert _Hook.hits == []


def _delivered(t, inv: str) -> dict:
    for _ in range(500):
        rec = t.http.get(f"/v1/invocations/{inv}").json()
        if (rec.get("callback") or {}).get("state"):
            return rec
        time.sleep(0.02)
    raise AssertionError(f"no delivery recorded for {inv}")
