"""The HTTP gateway end to end: a real uvicorn server on 127.0.0.1, a real local pool."""

from __future__ import annotations

import http.server
import json
import os
import pickle
import threading
import time

import httpx

from hetfaas.gateway import RESTART_REASON  # noqa: F401  (the public name exists)


def test_health_needs_no_token_and_everything_else_does(gateway):
    assert httpx.get(gateway.url + "/healthz").json() == {"status": "ok"}
    for method, path in [("GET", "/v1/functions"), ("POST", "/v1/functions/x/invoke"),
                         ("GET", "/v1/invocations"), ("DELETE", "/v1/invocations/x"),
                         ("GET", "/v1/nowhere")]:  # fmt: skip
        resp = httpx.request(method, gateway.url + path)
        assert resp.status_code == 401, (method, path)
        assert resp.headers["www-authenticate"].startswith("Bearer")
        assert "hetfaas token create" in resp.json()["detail"]
    resp = httpx.get(gateway.url + "/v1/functions", headers={"Authorization": "Bearer hft_x"})
    assert resp.status_code == 401 and resp.json()["detail"] == "invalid or revoked token"
    schema = httpx.get(gateway.url + "/openapi.json").json()
    assert "/v1/functions/{name}/invoke" in schema["paths"]
    assert "HTTPBearer" in schema["components"]["securitySchemes"]


def test_a_revoked_token_is_refused_within_a_second(gateway):
    t = gateway.tenant()
    assert t.http.get("/v1/functions").status_code == 200
    gateway.store.revoke_token(t.token_id)
    time.sleep(1.1)
    assert t.http.get("/v1/functions").status_code == 401


def test_deploy_list_and_redeploy(gateway):
    t = gateway.tenant()
    resp = t.http.post("/v1/functions", json={"import_path": "tests.gateway.funcs:add",
                                              "resources": {"timeout_s": 30}})  # fmt: skip
    assert resp.status_code == 201 and resp.json()["created"] is True
    assert resp.json()["resources"] == {"cpus": 1, "gpus": 0, "memory_mb": None, "timeout_s": 30}
    resp = t.http.post("/v1/functions", json={"import_path": "tests.gateway.funcs:add",
                                              "idempotent": True})  # fmt: skip
    assert resp.status_code == 200 and resp.json()["idempotent"] is True
    assert [f["name"] for f in t.http.get("/v1/functions").json()["functions"]] == ["add"]
    assert t.http.get("/v1/functions/add").json()["import_path"] == "tests.gateway.funcs:add"
    resp = t.http.post("/v1/functions", json={"import_path": "os:system"})
    assert resp.status_code == 403 and "--allow-module os" in resp.json()["detail"]
    resp = t.http.post("/v1/functions", json={"import_path": "tests.gateway.funcs:nothing"})
    assert resp.status_code == 422 and "no attribute" in resp.json()["detail"]
    resp = t.http.post("/v1/functions", json={"import_path": "tests.gateway.funcs:add",
                                              "resources": {"cpus": 0}})  # fmt: skip
    assert resp.status_code == 422


def test_blocking_invoke_returns_the_record_with_its_result(gateway):
    t = gateway.tenant()
    t.deploy("add")
    t.deploy("fail")
    t.deploy("shout")
    resp = t.http.post("/v1/functions/add/invoke", json={"args": [2], "kwargs": {"b": 40}})
    assert resp.status_code == 200
    rec = resp.json()
    assert (rec["state"], rec["result"], rec["function"]) == ("COMPLETED", 42, "add")
    assert rec["timings"]["total_us"] > 0 and rec["gateway"]["total_ms"] > 0
    assert t.http.get(f"/v1/invocations/{rec['id']}").json()["result"] == 42
    rec = t.http.post("/v1/functions/fail/invoke", json={"args": ["bad"]}).json()
    assert rec["state"] == "FAILED" and rec["result"] is None
    assert rec["error"]["type"] == "ValueError" and rec["error"]["message"] == "bad"
    rec = t.http.post("/v1/functions/shout/invoke", json={"args": ["hey"]}).json()
    assert rec["result"] == "HEY" and "out: hey" in rec["stdout"] and "err: hey" in rec["stderr"]
    resp = t.http.post("/v1/functions/nothing/invoke", json={})
    assert resp.status_code == 404 and resp.json()["error"] == "not_found"


def test_past_its_wait_a_blocking_invoke_answers_202_with_the_id(gateway):
    t = gateway.tenant()
    t.deploy("sleep")
    t0 = time.monotonic()
    resp = t.http.post("/v1/functions/sleep/invoke?wait=0.2", json={"args": [1.0]})
    assert resp.status_code == 202 and time.monotonic() - t0 < 0.9
    body = resp.json()
    assert resp.headers["location"] == f"/v1/invocations/{body['id']}" == body["location"]
    assert t.http.get(body["location"]).json()["state"] == "RUNNING"
    rec = t.http.get(body["location"], params={"wait": 10}).json()
    assert (rec["state"], rec["result"]) == ("COMPLETED", 1.0)


def test_bad_input_is_a_422(gateway):
    t = gateway.tenant()
    t.deploy("add")
    for body in ({"args": 3}, {"kwargs": []}, {"args": [], "other": 1}):
        assert t.http.post("/v1/functions/add/invoke", json=body).status_code == 422, body
    assert t.http.post("/v1/functions/add/invoke?wait=-1", json={}).status_code == 422
    assert t.http.post("/v1/functions/add/invoke", content=b"{not json").status_code == 422
    assert t.http.get("/v1/invocations?state=LOST").status_code == 422
    assert t.http.get("/v1/invocations?since=yesterday").status_code == 422
    resp = t.http.post("/v1/functions/add/async", json={"callback_url": "file:///etc/passwd"})
    assert resp.status_code == 422


class _Receiver(http.server.BaseHTTPRequestHandler):
    got: list[dict] = []
    arrived = threading.Event()

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).got.append(json.loads(body))
        self.send_response(204)
        self.end_headers()
        type(self).arrived.set()

    def log_message(self, *args):
        pass


def test_async_invoke_posts_the_record_to_its_callback_url(gateway):
    t = gateway.tenant()
    t.deploy("add")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/done"
        resp = t.http.post("/v1/functions/add/async", json={"args": [1, 2], "callback_url": url})
        assert resp.status_code == 202
        inv = resp.json()["id"]
        assert _Receiver.arrived.wait(10)
        (got,) = _Receiver.got
        assert (got["id"], got["state"], got["result"]) == (inv, "COMPLETED", 3)
        for _ in range(100):  # the delivery is recorded after it is made
            rec = t.http.get(f"/v1/invocations/{inv}").json()
            if rec["callback"].get("state"):
                break
            time.sleep(0.02)
        assert rec["callback"]["url"] == url
        assert rec["callback"]["state"] == "delivered" and rec["callback"]["status"] == 204
    finally:
        server.shutdown()


def test_batch_invoke_gives_ids_or_every_result_in_order(gateway):
    t = gateway.tenant()
    t.deploy("add")
    inputs = [{"args": [i, i]} for i in range(50)]
    resp = t.http.post("/v1/functions/add/batch?wait=20", json={"inputs": inputs})
    assert resp.status_code == 200
    body = resp.json()
    assert body["results"] == [2 * i for i in range(50)]
    assert body["states"] == ["COMPLETED"] * 50 and body["errors"] == [None] * 50
    listed = t.http.get("/v1/invocations", params={"batch": body["batch"], "limit": 1000})
    assert sorted(r["id"] for r in listed.json()["invocations"]) == sorted(body["ids"])
    resp = t.http.post("/v1/functions/add/batch", json={"inputs": inputs[:3]})
    assert resp.status_code == 202 and len(resp.json()["ids"]) == 3 and resp.json()["batch"]
    done = t.http.post("/v1/invocations/wait", json={"ids": resp.json()["ids"], "timeout": 10})
    assert done.status_code == 200 and done.json()["done"]
    assert t.http.post("/v1/functions/add/batch", json={"inputs": []}).status_code == 422


def test_a_batch_runs_in_chunks_and_keeps_each_item_s_result_or_error(gateway):
    t = gateway.tenant()
    t.deploy("add")
    inputs = [{"args": ["x", 1] if i % 10 == 3 else [i, 1]} for i in range(100)]
    body = t.http.post("/v1/functions/add/batch?wait=20", json={"inputs": inputs}).json()
    for i in range(100):
        if i % 10 == 3:
            assert body["states"][i] == "FAILED" and body["errors"][i]["type"] == "TypeError"
        else:
            assert (body["states"][i], body["results"][i]) == ("COMPLETED", i + 1)
    listed = t.http.get("/v1/invocations", params={"batch": body["batch"], "limit": 1000})
    records = listed.json()["invocations"]
    one = {"size": 1, "index": 0}  # the last few calls of a batch go one by one
    chunks = {(r["timings"]["submitted_ns"], r["timings"].get("chunk", one)["size"])
              for r in records}  # fmt: skip
    assert 1 < len(chunks) < 100  # several chunks, of several items each
    assert sum(size for _, size in chunks) == 100
    assert {r["timings"].get("chunk", one)["index"] for r in records} >= {0, 1}


def test_the_invocation_list_filters_by_function_state_and_time(gateway):
    t = gateway.tenant()
    t.deploy("add")
    t.deploy("fail")
    t0 = time.time()
    t.http.post("/v1/functions/add/invoke", json={"args": [1]})
    t.http.post("/v1/functions/fail/invoke", json={"args": ["x"]})
    t.http.post("/v1/functions/fail/invoke", json={"args": ["y"]})
    get = lambda **q: t.http.get("/v1/invocations", params=q).json()["invocations"]  # noqa: E731
    assert len(get()) == 3
    assert [r["function"] for r in get(function="add")] == ["add"]
    failed = get(state="failed")
    assert [r["error"]["message"] for r in failed] == ["y", "x"]  # newest first
    assert failed[0]["timings"] and "result" not in failed[0]
    assert len(get(since=t0 - 1)) == 3 and get(since=time.time() + 60) == []
    assert len(get(limit=1)) == 1


def test_cancel_queued_running_and_ended_calls(gateway):
    t = gateway.tenant()
    t.deploy("sleep")
    ids = [t.http.post("/v1/functions/sleep/async", json={"args": [20]}).json()["id"]
           for _ in range(3)]  # fmt: skip  # max_inflight=2: the third is queued
    rec = t.http.delete(f"/v1/invocations/{ids[2]}")
    assert rec.status_code == 200 and rec.json()["state"] == "CANCELLED"
    for i in ids[:2]:
        rec = t.http.delete(f"/v1/invocations/{i}")
        assert rec.status_code == 200 and rec.json()["state"] == "CANCELLED", rec.text
    resp = t.http.delete(f"/v1/invocations/{ids[0]}")
    assert resp.status_code == 409 and "already ended: CANCELLED" in resp.json()["detail"]
    assert t.http.delete("/v1/invocations/nope").status_code == 404


def test_a_token_sees_only_its_own_namespace(gateway):
    a, b = gateway.tenant(), gateway.tenant()
    a.deploy("add")
    inv = a.http.post("/v1/functions/add/invoke", json={"args": [1]}).json()["id"]
    assert b.http.get("/v1/functions").json()["functions"] == []
    assert b.http.get("/v1/functions/add").status_code == 404
    assert b.http.post("/v1/functions/add/invoke", json={"args": [1]}).status_code == 404
    assert b.http.get(f"/v1/invocations/{inv}").status_code == 404
    assert b.http.delete(f"/v1/invocations/{inv}").status_code == 404
    waited = b.http.post("/v1/invocations/wait", json={"ids": [inv], "timeout": 0}).json()
    assert waited == {"done": [], "pending": [], "missing": [inv]}
    assert b.http.get("/v1/invocations").json()["invocations"] == []
    assert a.http.get(f"/v1/invocations/{inv}").json()["result"] == 1


def test_bodies_over_the_limit_are_413_with_the_limit_named(gateway):
    t = gateway.tenant(max_body_bytes=1000)
    t.deploy("noop")
    resp = t.http.post("/v1/functions/noop/invoke", json={"args": ["x" * 2000]})
    assert resp.status_code == 413
    assert resp.json()["limit_bytes"] == 1000 and "1000 bytes" in resp.json()["detail"]

    def chunks():  # no Content-Length: read up to the limit, refused past it
        yield b'{"args": ["'
        for _ in range(10):
            yield b"x" * 200
        yield b'"]}'

    resp = t.http.post("/v1/functions/noop/invoke", content=chunks())
    assert resp.status_code == 413
    ok = t.http.post("/v1/functions/noop/invoke", json={"args": ["x" * 500]})
    assert ok.status_code == 200 and ok.json()["result"] == "x" * 500
    other = gateway.tenant()  # the gateway's own limit (200,000 bytes here)
    resp = other.http.post("/v1/functions/noop/invoke", json={"args": ["x" * 300_000]})
    assert resp.status_code == 413 and resp.json()["limit_bytes"] == 200_000


def test_over_its_rate_a_token_gets_429_with_retry_after(gateway):
    t = gateway.tenant(rate_per_s=2)
    codes = [t.http.get("/v1/functions").status_code for _ in range(4)]
    assert codes[:2] == [200, 200] and codes[-1] == 429
    resp = t.http.get("/v1/functions")
    assert resp.status_code == 429 and int(resp.headers["retry-after"]) >= 1
    assert resp.json()["limit_per_s"] == 2 and "2 requests/s" in resp.json()["detail"]
    assert gateway.tenant().http.get("/v1/functions").status_code == 200  # per token
    time.sleep(0.6)
    assert t.http.get("/v1/functions").status_code == 200


def test_large_results_live_in_a_file_and_non_json_results_fail_clearly(gateway):
    t = gateway.tenant()
    t.deploy("big")
    t.deploy("not_json")
    rec = t.http.post("/v1/functions/big/invoke", json={"args": [300_000]}).json()
    assert rec["result"] == "x" * 300_000
    row = gateway.store.read("SELECT result, result_path FROM invocations WHERE id = ?",
                             (rec["id"],))[0]  # fmt: skip
    assert row["result"] is None and os.path.exists(row["result_path"])
    rec = t.http.post("/v1/functions/not_json/invoke", json={}).json()
    assert rec["state"] == "FAILED" and "not JSON" in rec["error"]["message"]


def test_request_bytes_are_never_unpickled(gateway, tmp_path):
    t = gateway.tenant()
    t.deploy("noop")
    marker = tmp_path / "unpickled"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    payload = pickle.dumps({"args": [Evil()]})
    for ctype, status in [("application/octet-stream", 422), ("application/python-pickle", 415),
                          ("application/json", 422), (None, 422)]:  # fmt: skip
        headers = {"Content-Type": ctype} if ctype else {}
        resp = t.http.post("/v1/functions/noop/invoke", content=payload, headers=headers)
        assert resp.status_code == status, (ctype, resp.text)
        assert resp.json()["error"] in ("bad_input", "unsupported_media_type")
    # an octet-stream body with a dtype and shape is an array of those bytes, nothing more
    headers = {"Content-Type": "application/octet-stream", "X-Dtype": "uint8",
               "X-Shape": str(len(payload))}  # fmt: skip
    resp = t.http.post("/v1/functions/noop/invoke", content=payload, headers=headers)
    assert resp.json()["result"] == list(payload)
    assert not marker.exists()


def test_cors_is_off_by_default(gateway):
    resp = httpx.options(gateway.url + "/v1/functions", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})  # fmt: skip
    assert "access-control-allow-origin" not in resp.headers
