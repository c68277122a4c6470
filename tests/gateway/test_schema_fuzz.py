"""Schemathesis over the OpenAPI schema the gateway serves, against a real gateway (uvicorn in a
thread over a real local pool, see ``conftest.py``): no 5xx, responses as the schema says, no
answer without a valid token, nothing of one namespace reachable with another's token.

Every operation of ``/openapi.json`` is fuzzed with a valid token: positive data with generated
path parameters and with real ones (deployed functions, ended invocations, so that bodies reach
the handlers), and negative data. The checks are schemathesis's own
(``not_a_server_error``, the response's schema, content type and headers, positive data
accepted, negative data rejected); its ``status_code_conformance`` is replaced by ours: a status
the schema lists, or one of the gateway's documented errors (:mod:`hetfaas.gateway.errors`) with
its JSON error body. Mismatches known in the gateway are listed in ``KNOWN``, left out of the
main run and each pinned by a strict xfail, so that a fix shows up as a failure to clean up.

``HETFAAS_FUZZ_EXAMPLES`` (default 10) sets the examples per operation, mode and path variant;
the cases are the same every run unless ``HETFAAS_FUZZ_RANDOM=1`` (new ones each run).
"""

from __future__ import annotations

import collections
import contextlib
import http.server
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
httpx = pytest.importorskip("httpx")
requests = pytest.importorskip("requests")  # schemathesis' own transport

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.core.failures import FailureGroup  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

EXAMPLES = int(os.environ.get("HETFAAS_FUZZ_EXAMPLES", "10"))
# the same cases every run (CI must not find a new bug by chance); HETFAAS_FUZZ_RANDOM=1 explores
RANDOM = os.environ.get("HETFAAS_FUZZ_RANDOM") == "1"
PUBLIC = ("/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")
GATEWAY_ERRORS = {401, 403, 404, 409, 413, 415, 429}  # besides 422, which the schema lists
CHECKS: dict[str, Callable[..., Any]] = {
    "not_a_server_error": not_a_server_error,
    "response_schema_conformance": response_schema_conformance,
    "content_type_conformance": content_type_conformance,
    "response_headers_conformance": response_headers_conformance,
    "negative_data_rejection": negative_data_rejection,
}
# reported, not failed: the schema looser than the server (a free string the server checks)
SOFT_CHECKS = {"positive_data_acceptance": positive_data_acceptance}
# (operation, check) -> why it fails today; "*": every operation (none now: the schema
# documents the gateway's errors, /metrics' text, batch's 202 and the filters' types).
KNOWN: dict[tuple[str, str], str] = {}
FUNCS = ("echo", "add", "fail", "noop", "shout")  # safe with any JSON input


@contextlib.contextmanager
def _callback_sink() -> Iterator[str]:
    """A local URL for the callback_url of generated bodies: nothing leaves the machine."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/callback"
    finally:
        server.shutdown()
        server.server_close()


class Fuzz:
    """The loaded schema, a tenant with functions and invocations, and a callback sink."""

    def __init__(self, gateway: Any, sink: str) -> None:
        self.gateway = gateway
        self.sink = sink
        self.tenant = gateway.tenant()
        for fn in FUNCS:
            self.tenant.deploy(fn)
        http = self.tenant.http
        done = http.post("/v1/functions/echo/invoke", json={"args": [1]}).json()
        failed = http.post("/v1/functions/fail/invoke", json={"args": ["no"]}).json()
        assert done["state"] == "COMPLETED" and failed["state"] == "FAILED", (done, failed)
        self.ids = [done["id"], failed["id"]]
        self.headers = {"Authorization": f"Bearer {self.tenant.token}"}
        self.schema = schemathesis.openapi.from_url(gateway.url + "/openapi.json")
        self.schema.config.update(base_url=gateway.url)
        # the token is ours to send (its absence is tested apart); unknown query parameters
        # are ignored, as HTTP APIs do; 413 is how an over-long body is rejected
        self.schema.config.generation.update(
            with_security_parameters=False, allow_extra_parameters=True
        )
        self.schema.config.checks.negative_data_rejection.expected_statuses.append("413")
        self.raw = httpx.get(gateway.url + "/openapi.json").json()
        self.session = requests.Session()  # keep-alive, as clients do
        self.operations = [r.ok() for r in self.schema.get_all_operations()]

    def operation(self, label: str) -> Any:
        return next(op for op in self.operations if op.label == label)

    def run(
        self,
        op: Any,
        mode: GenerationMode,
        on_case: Callable[[Any, Any], None],
        *,
        real_params: bool = False,
        headers: dict[str, str] | None = None,
        path_parameters: dict[str, Any] | None = None,
        examples: int = EXAMPLES,
    ) -> bool:
        """Send ``examples`` generated cases of ``op`` and hand each (case, response) to
        ``on_case``; False when the mode has nothing to generate (no parameters, no body)."""
        params = [p for p in ("name", "invocation_id") if "{" + p + "}" in op.path]
        fixed = {k: v for k, v in (path_parameters or {}).items() if k in params}
        spec = self.raw["paths"][op.path][op.method.lower()]
        if real_params and not params:
            return False
        if mode == GenerationMode.NEGATIVE and not (spec.get("parameters") or
                                                    spec.get("requestBody")):  # fmt: skip
            return False  # nothing to make invalid
        strategy = st.tuples(  # real names and ids replace the generated ones
            op.as_strategy(mode, path_parameters=fixed or None),
            st.sampled_from(FUNCS) if real_params and "name" in params else st.none(),
            st.sampled_from(self.ids) if real_params and "invocation_id" in params else st.none(),
        )

        @given(drawn=strategy)
        @settings(
            max_examples=examples, deadline=None, database=None, report_multiple_bugs=False,
            phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
            derandomize=not RANDOM,
        )  # fmt: skip
        def send(drawn: tuple[Any, str | None, str | None]) -> None:
            case, name, invocation_id = drawn
            if name is not None:
                case.path_parameters["name"] = name
            if invocation_id is not None:
                case.path_parameters["invocation_id"] = invocation_id
            body = case.body  # callbacks go to the local sink, nowhere else
            if isinstance(body, dict) and str(body.get("callback_url", "")).startswith("http"):
                body["callback_url"] = self.sink
            for key, value in (case.headers or {}).items():
                if "callback" in key.lower() and str(value).startswith("http"):
                    case.headers[key] = self.sink
            try:
                response = case.call(
                    session=self.session, headers=headers if headers is not None else self.headers
                )
            except Exception as exc:  # no answer at all: as bad as a 5xx
                on_case(case, exc)
                return
            on_case(case, response)

        try:
            send()
        except Unsatisfiable:
            return False
        return True


@pytest.fixture(scope="module")
def fuzz(gateway: Any) -> Iterator[Fuzz]:
    with _callback_sink() as sink:
        yield Fuzz(gateway, sink)


def _curl(case: Any) -> str:
    try:
        text = case.as_curl_command(headers={"Authorization": "Bearer $TOKEN"})
    except Exception:
        text = f"{case.method} {case.formatted_path} query={case.query} body={case.body!r}"
    return text if len(text) <= 800 else text[:800] + " ..."


def _known(label: str, check: str, response: Any) -> str | None:
    reason = KNOWN.get((label, check))
    if reason is None and check == "response_schema_conformance" and response.status_code == 422:
        with contextlib.suppress(ValueError):
            body = response.json()
            if isinstance(body, dict) and isinstance(body.get("detail"), str):
                reason = KNOWN.get(("*", "response_schema_conformance/422"))
    return reason


def _documented(raw: dict[str, Any], op: Any) -> set[int]:
    responses = raw["paths"][op.path][op.method.lower()]["responses"]
    return {int(code) for code in responses if code.isdigit()}


# ------------------------------------------------------------------ the fuzz run


def test_schemathesis_finds_no_5xx_and_responses_conform_to_the_schema(fuzz: Fuzz) -> None:
    t0 = time.monotonic()
    failures: list[str] = []
    statuses: collections.Counter[tuple[str, int]] = collections.Counter()
    skipped: collections.Counter[str] = collections.Counter()
    looser: collections.Counter[str] = collections.Counter()

    def on_case(op: Any, mode: GenerationMode) -> Callable[[Any, Any], None]:
        documented = _documented(fuzz.raw, op) | GATEWAY_ERRORS

        def check(case: Any, response: Any) -> None:
            where = f"{op.label} [{mode.value}]\n  {_curl(case)}"
            if isinstance(response, Exception):
                failures.append(f"{where}\n  no response: {type(response).__name__}: {response}")
                return
            statuses[(op.label, response.status_code)] += 1
            if response.status_code >= 500:
                failures.append(f"{where}\n  HTTP {response.status_code}: {response.text[:500]}")
                return
            if (op.label, f"status {response.status_code}") in KNOWN:
                skipped[f"{op.label}: status {response.status_code}"] += 1
            elif response.status_code not in documented:
                failures.append(f"{where}\n  HTTP {response.status_code}, not documented")
            if response.status_code in GATEWAY_ERRORS:
                try:
                    body = response.json()
                except ValueError:
                    body = response.text[:300]
                if not (isinstance(body, dict) and {"error", "detail"} <= set(body)):
                    failures.append(f"{where}\n  an error without its JSON body: {body!r}")
            checks = []
            for name, fn in CHECKS.items():
                if _known(op.label, name, response) is None:
                    checks.append(fn)
                else:
                    skipped[f"{op.label}: {name}"] += 1
            try:
                case.validate_response(response, checks=checks, headers=fuzz.headers)
            except (Exception, FailureGroup) as exc:
                failures.append(f"{where}\n  {str(exc)[:1500]}")
            if _known(op.label, "positive_data_acceptance", response) is None:
                try:
                    case.validate_response(response, checks=list(SOFT_CHECKS.values()))
                except (Exception, FailureGroup):
                    looser[op.label] += 1

        return check

    ran = []
    runs = [(GenerationMode.POSITIVE, False), (GenerationMode.POSITIVE, True),
            (GenerationMode.NEGATIVE, False)]  # fmt: skip
    for op in fuzz.operations:
        for mode, real in runs:
            if fuzz.run(op, mode, on_case(op, mode), real_params=real):
                ran.append((op.label, mode.value, real))
    table = "\n".join(f"  {label}: {code} x{n}" for (label, code), n in sorted(statuses.items()))
    print(f"\n{sum(statuses.values())} requests in {time.monotonic() - t0:.1f} s:\n{table}")
    print("checks left out (KNOWN):", dict(skipped))
    print("schema-valid requests the gateway refused (its schema is looser):", dict(looser))
    assert not failures, f"{len(failures)} failures; the first ones:\n\n" + "\n\n".join(
        failures[:10]
    )

    labels = {op.label for op in fuzz.operations}
    served = {f"{m.upper()} {p}" for p, item in fuzz.raw["paths"].items() for m in item}
    assert labels == served  # every operation of the served schema was fuzzed
    assert {label for label, _, _ in ran} == labels
    reached = {label for (label, code) in statuses if code < 300}
    core = {"GET /v1/functions", "GET /v1/functions/{name}", "POST /v1/functions/{name}/invoke",
            "POST /v1/functions/{name}/async", "POST /v1/functions/{name}/batch",
            "GET /v1/invocations/{invocation_id}", "POST /v1/invocations/wait",
            "GET /v1/invocations", "GET /healthz"}  # fmt: skip
    assert core & labels <= reached, sorted((core & labels) - reached)  # the handlers ran
    assert statuses[("POST /v1/functions/{name}/invoke", 200)] > 0


# ------------------------------------------------------------------ tokens


def _dummy_request(path: str, method: str, name: str, invocation_id: str) -> dict[str, Any]:
    url = path.replace("{name}", name).replace("{invocation_id}", invocation_id)
    kwargs: dict[str, Any] = {"method": method.upper(), "url": url}
    if method.lower() in ("post", "put", "patch"):
        kwargs["json"] = {}
    return kwargs


def _protected(raw: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p, m) for p, item in raw["paths"].items() for m in item if p not in PUBLIC]


def test_every_operation_but_health_and_docs_answers_401_without_a_valid_token(
    fuzz: Fuzz, gateway: Any
) -> None:
    other = gateway.tenant()
    other.deploy("echo")
    revoked_id = other.http.post("/v1/functions/echo/invoke", json={"args": [2]}).json()["id"]
    assert other.http.get("/v1/functions").status_code == 200  # verified once: cached
    gateway.store.revoke_token(other.token_id)
    time.sleep(1.1)  # the cache rechecks revocations every second
    token = fuzz.tenant.token
    bad = {  # on every operation
        "no header": None,
        "garbage": "Bearer not-a-token",
        "revoked": f"Bearer {other.token}",
    }
    more = {  # on a few (those with a token's shape cost a PBKDF2 each)
        "unknown token of the right shape": f"Bearer hft_{'0' * 12}_{token[-20:]}",
        "truncated": f"Bearer {token[:-1]}",
        "another scheme": f"Basic {token}",
        "no scheme": token,
        "empty bearer": "Bearer",
    }
    ops = [*_protected(fuzz.raw), ("/v1/nowhere", "get"), ("/v1/functions", "put")]
    assert len(ops) >= 12, ops
    seen = 0
    anonymous = httpx.Client(base_url=gateway.url, timeout=30)
    for k, (path, method) in enumerate(ops):
        for why, auth in (bad | more if k % 6 == 0 else bad).items():
            req = _dummy_request(path, method, "echo", revoked_id)
            headers = {} if auth is None else {"Authorization": auth}
            resp = anonymous.request(req.pop("method"), req.pop("url"), headers=headers, **req)
            assert resp.status_code == 401, (method, path, why, resp.status_code, resp.text)
            assert resp.headers["www-authenticate"].startswith("Bearer"), (method, path, why)
            assert set(resp.json()) == {"error", "detail"}, resp.text  # and nothing else
            assert revoked_id not in resp.text
            seen += 1
    assert seen == len(ops) * len(bad) + len(range(0, len(ops), 6)) * len(more)
    for path in PUBLIC:
        assert anonymous.get(path).status_code == 200, path
    anonymous.close()
    # the same routes answer with the tenant's own valid token (the 401 above was the token)
    for path, method in _protected(fuzz.raw):
        req = _dummy_request(path, method, "echo", fuzz.ids[0])
        resp = fuzz.tenant.http.request(req.pop("method"), req.pop("url"), **req)
        assert resp.status_code != 401, (method, path, resp.text)


def test_schemathesis_cases_without_a_token_are_all_401(fuzz: Fuzz) -> None:
    """Generated cases of every protected operation, sent with a garbage token."""
    codes: collections.Counter[int] = collections.Counter()
    labels: set[str] = set()

    def on_case(case: Any, response: Any) -> None:
        assert not isinstance(response, Exception), response
        codes[response.status_code] += 1
        labels.add(case.operation.label)
        assert response.status_code == 401, (case.operation.label, response.text)

    for op in fuzz.operations:
        if op.path not in PUBLIC:
            fuzz.run(op, GenerationMode.POSITIVE, on_case, headers={"Authorization": "Bearer x"},
                     examples=5)  # fmt: skip
    assert set(codes) == {401}
    assert labels == {f"{m.upper()} {p}" for p, m in _protected(fuzz.raw)}


# ------------------------------------------------------------------ across tokens


def test_no_access_across_tokens(fuzz: Fuzz, gateway: Any) -> None:
    a, b = gateway.tenant(), gateway.tenant()
    a.deploy("shout", name="a-shout")
    a.deploy("echo")
    a.deploy("sleep")
    b.deploy("add", name="echo")  # the same name in b's namespace: b's own function
    done = a.http.post("/v1/functions/a-shout/invoke", json={"args": ["secret"]}).json()
    assert done["result"] == "SECRET"
    batch = a.http.post("/v1/functions/echo/batch?wait=30", json={"inputs": [{"args": [7]}]})
    assert batch.status_code == 200, batch.text
    batch_id, batch_ids = batch.json()["batch"], batch.json()["ids"]
    slow = [
        a.http.post("/v1/functions/sleep/async", json={"args": [0.4]}).json()["id"]
        for _ in range(3)
    ]  # fmt: skip  (two running, one queued: max_inflight=2)
    a_ids = [done["id"], *batch_ids, *slow]
    secrets_ = [a.namespace, "SECRET", "a-shout", *a_ids]

    def leaks(text: str) -> list[str]:
        return [s for s in secrets_ if s in text]

    # every route taking a name or an id, with a's names and ids and b's token: 404
    for inv in a_ids:
        for method in ("GET", "DELETE"):
            resp = b.http.request(method, f"/v1/invocations/{inv}")
            assert resp.status_code == 404, (method, inv, resp.text)
            assert leaks(resp.text) == [inv] or not leaks(resp.text), resp.text  # "no ... id"
    for suffix in ("", "/invoke", "/async", "/batch"):
        method = "GET" if suffix == "" else "POST"
        body = {"inputs": [{"args": ["x"]}]} if suffix == "/batch" else {"args": ["x"]}
        resp = b.http.request(method, f"/v1/functions/a-shout{suffix}",
                              json=None if method == "GET" else body)  # fmt: skip
        assert resp.status_code == 404, (suffix, resp.text)
    seen: collections.Counter[str] = collections.Counter()

    def on_case(case: Any, response: Any) -> None:
        assert not isinstance(response, Exception), response
        label = case.operation.label
        # 404 as for a name or id that does not exist; a 422 for the request's own shape
        # (a header the schema leaves free and the gateway checks) is no access either
        assert response.status_code in (404, 422), (label, _curl(case), response.text)
        if response.status_code == 404:
            seen[label] += 1
            assert response.json()["error"] == "not_found"
        assert not [s for s in leaks(response.text) if s not in str(case.path_parameters)]

    params = {"name": "a-shout", "invocation_id": slow[-1]}
    with_params = [op for op in fuzz.operations if "{" in op.path]
    assert len(with_params) >= 6, [op.label for op in with_params]
    for op in with_params:
        fuzz.run(op, GenerationMode.POSITIVE, on_case, path_parameters=params,
                 headers={"Authorization": f"Bearer {b.token}"}, examples=8)  # fmt: skip
    assert set(seen) == {op.label for op in with_params}, seen  # each answered 404

    # the lists and the wait show b nothing of a's
    assert b.http.get("/v1/functions/echo").json()["import_path"].endswith(":add")
    assert [f["name"] for f in b.http.get("/v1/functions").json()["functions"]] == ["echo"]
    for query in ("", "?function=a-shout", f"?batch={batch_id}", "?function=echo&limit=1000"):
        resp = b.http.get("/v1/invocations" + query)
        assert resp.status_code == 200 and not leaks(resp.text), (query, resp.text[:300])
    waited = b.http.post("/v1/invocations/wait", json={"ids": a_ids, "timeout": 0.5}).json()
    assert waited == {"done": [], "pending": [], "missing": a_ids}

    # b's cancels did nothing to a's calls: they all end, completed
    rows = {}
    end = time.monotonic() + 30
    while len(rows) < len(a_ids) and time.monotonic() < end:
        body = a.http.post("/v1/invocations/wait", json={"ids": a_ids, "timeout": 5}).json()
        rows.update({r["id"]: r for r in body["done"]})
    assert {i: rows[i]["state"] for i in a_ids} == dict.fromkeys(a_ids, "COMPLETED")
    assert [rows[i]["result"] for i in slow] == [0.4] * 3


def test_metrics_name_no_function_of_another_namespace(fuzz: Fuzz, gateway: Any) -> None:
    a, b = gateway.tenant(), gateway.tenant()
    a.deploy("noop", name="a-private-fn")
    assert a.http.post("/v1/functions/a-private-fn/invoke", json={}).status_code == 200
    text = b.http.get("/metrics").text
    assert "a-private-fn" not in text


# ------------------------------------------------------------------ hostile inputs

DEEP = "[" * 5000 + "]" * 5000  # 10 KB: past json's recursion limit
HOSTILE = {
    "deep JSON, deploy": ("POST", "/v1/functions", '{"import_path": ' + DEEP + "}"),
    "deep JSON, batch": (
        "POST", "/v1/functions/echo/batch", '{"inputs": [{"args": ' + DEEP + "}]}"),
    "deep JSON, wait": ("POST", "/v1/invocations/wait", '{"ids": ' + DEEP + "}"),
    "deep JSON, invoke": ("POST", "/v1/functions/echo/invoke", '{"args": ' + DEEP + "}"),
    "deep JSON, async": ("POST", "/v1/functions/echo/async", '{"args": ' + DEEP + "}"),
    "lone surrogate, deploy module": (
        "POST", "/v1/functions", '{"import_path": "tests.\\ud800:x"}'),
    "lone surrogate, deploy attribute": (
        "POST", "/v1/functions", '{"import_path": "tests.gateway.funcs:\\ud800"}'),
    "lone surrogate, batch callback": (
        "POST", "/v1/functions/echo/batch", '{"inputs": [{}], "callback_url": "http://\\ud800"}'),
    "lone surrogate, async callback": (
        "POST", "/v1/functions/echo/async", '{"callback_url": "http://\\ud800"}'),
    "lone surrogate, wait ids": ("POST", "/v1/invocations/wait", '{"ids": ["\\ud800"]}'),
    "lone surrogate, invoke args": ("POST", "/v1/functions/echo/invoke", '{"args": ["\\ud800"]}'),
    "huge integer, invoke": ("POST", "/v1/functions/echo/invoke", '{"args": [' + "9" * 5000 + "]}"),
    "bytes not UTF-8, invoke": ("POST", "/v1/functions/echo/invoke", b'{"args": ["\xff"]}'),
    "bytes not UTF-8, batch": ("POST", "/v1/functions/echo/batch", b'{"inputs": [\xfe]}'),
}  # fmt: skip
XFAIL_5XX: dict[str, str] = {}  # hostile bodies that still get a 5xx: none


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(k, marks=pytest.mark.xfail(strict=True, reason=XFAIL_5XX[k]))
        if k in XFAIL_5XX
        else k
        for k in HOSTILE
    ],
)
def test_hostile_bodies_get_a_4xx_not_a_5xx(fuzz: Fuzz, case: str) -> None:
    """Inputs schemathesis does not generate (its strings hold no lone surrogates, its
    arrays are shallow)."""
    method, path, body = HOSTILE[case]
    headers = {**fuzz.headers, "Content-Type": "application/json"}
    with httpx.Client(base_url=fuzz.gateway.url, headers=headers, timeout=30) as http:
        resp = http.request(method, path, content=body)
    assert httpx.get(fuzz.gateway.url + "/healthz").status_code == 200  # and it still serves
    if resp.status_code >= 500:  # (no traceback: Python 3.11.7's ast fails on pytest's one)
        pytest.fail(f"{case}: HTTP {resp.status_code}: {resp.text[:300]}", pytrace=False)
    if resp.status_code >= 400:
        assert set(resp.json()) >= {"error", "detail"}, resp.text[:300]


def test_deploy_cannot_reach_past_the_allowed_module(fuzz: Fuzz) -> None:
    resp = fuzz.tenant.http.post(
        "/v1/functions", json={"import_path": "tests.gateway.funcs:os.system", "name": "sys"}
    )
    assert resp.status_code == 403, resp.text


# ------------------------------------------------------------------ the known mismatches


def _validate(fuzz: Fuzz, label: str, checks: list[Any], **case_kwargs: Any) -> None:
    case = fuzz.operation(label).Case(**case_kwargs)
    response = case.call(headers=fuzz.headers)
    case.validate_response(response, checks=checks, headers=fuzz.headers)


def test_metrics_content_type_is_documented(fuzz: Fuzz) -> None:
    _validate(fuzz, "GET /metrics", [content_type_conformance])


def test_invocation_filters_the_schema_allows_are_accepted(fuzz: Fuzz) -> None:
    refused = []

    def on_case(case: Any, response: Any) -> None:
        try:
            case.validate_response(response, checks=[positive_data_acceptance])
        except (Exception, FailureGroup):
            refused.append(_curl(case))

    fuzz.run(fuzz.operation("GET /v1/invocations"), GenerationMode.POSITIVE, on_case)
    assert not refused, refused[:3]


def test_batch_202_is_documented(fuzz: Fuzz) -> None:
    _validate(
        fuzz,
        "POST /v1/functions/{name}/batch",
        [status_code_conformance],
        path_parameters={"name": "echo"},
        query={"wait": 0},
        body={"inputs": [{}]},
    )


def test_bad_input_body_matches_the_schema(fuzz: Fuzz) -> None:
    _validate(fuzz, "POST /v1/functions", [response_schema_conformance],
              body={"import_path": "tests.gateway.funcs:nothing"})  # fmt: skip


def test_error_statuses_are_documented(fuzz: Fuzz) -> None:
    _validate(fuzz, "GET /v1/functions/{name}", [status_code_conformance],
              path_parameters={"name": "nothing"})  # fmt: skip


def test_the_schema_and_docs_are_public_and_parse(fuzz: Fuzz, gateway: Any) -> None:
    raw = httpx.get(gateway.url + "/openapi.json").json()
    assert raw == fuzz.raw and raw["openapi"].startswith("3.")
    assert "HTTPBearer" in raw["components"]["securitySchemes"]
    for path, item in raw["paths"].items():
        for method, op in item.items():
            if path not in PUBLIC:
                assert op.get("security") == [{"HTTPBearer": []}], (method, path)
    assert json.loads(json.dumps(raw)) == raw
