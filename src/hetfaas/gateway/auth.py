"""Who may call the gateway, how often and with how much: tokens, rates, body sizes.

:class:`Guard` is an ASGI middleware in front of every route but the public ones (health,
and the OpenAPI schema and docs unless turned off). In order, before the route reads a byte
of the body:

1. ``Authorization: Bearer <token>``: missing, unknown or revoked -> 401. A token verified
   once (one PBKDF2, in a thread, at most two at a time so that bad tokens cannot take the
   server's threads) is cached by its SHA-256; the cache checks the store for a revocation
   at most every ``recheck_s`` (1 s), so ``hetfaas token revoke`` takes effect within it.
   Failed tokens are limited per client address (:class:`FailureLimiter`: a burst of
   ``failed_per_min`` x 2, then ``failed_per_min`` a minute): past it, a token the cache
   does not know is refused with 429 and ``Retry-After`` before any PBKDF2 runs, so that
   nobody guesses tokens at speed or keeps the verifying threads busy; a cached valid token
   from the same address (a NAT) still passes.
2. The token's rate (its own, else the gateway's): a token bucket of one second's worth of
   requests; past it -> 429 with ``Retry-After``.
3. The body: JSON (another ``Content-Type`` -> 415: the gateway never unpickles), or on the
   invoke routes a binary array (:mod:`hetfaas.gateway.binary`: it needs a ``Content-Length``,
   else 411); a ``Content-Length`` over the token's limit (its own, else the gateway's:
   ``max_body_bytes`` for JSON, ``max_binary_bytes`` for binary) -> 413 naming the limit; a
   JSON body without a length is read up to the limit and refused past it.

The verified :class:`~hetfaas.gateway.store.Principal` is put in the request's state.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio

from .binary import BINARY_MEDIA
from .store import Principal, Store

_BINARY_ROUTES = (b"/invoke", b"/async")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PUBLIC_DOCS = ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")
# the dashboard's shell and static files hold no data (it comes from /v1/dashboard/...)
PUBLIC_DASHBOARD = (
    "/dashboard", "/dashboard/static/dashboard.js", "/dashboard/static/dashboard.css",
)  # fmt: skip


class TokenCache:
    """Verified tokens by the SHA-256 of the token (never the token itself)."""

    def __init__(self, store: Store, recheck_s: float = 1.0, size: int = 10_000) -> None:
        self.store = store
        self.recheck_s = recheck_s
        self.size = size
        self._cache: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()
        self._used: dict[str, float] = {}
        self._limiter = anyio.CapacityLimiter(2)

    @staticmethod
    def key(token: str) -> bytes:
        """What the cache knows ``token`` by."""
        return hashlib.sha256(token.encode()).digest()

    def known(self, key: bytes) -> bool:
        """Whether the token of ``key`` was verified lately (no PBKDF2 would run for it)."""
        return key in self._cache

    async def principal(self, token: str, key: bytes | None = None) -> Principal | None:
        """The token's principal, or None (``key``: :meth:`key` of it, if already made)."""
        key = self.key(token) if key is None else key
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None:
            principal, checked = hit
            if now - checked < self.recheck_s:
                return principal
            if self.store.token_revoked(principal.token_id):
                self._cache.pop(key, None)
                return None
            self._cache[key] = (principal, now)
            self._touch(principal, now)
            return principal
        found = await anyio.to_thread.run_sync(
            self.store.verify_token, token, limiter=self._limiter
        )
        if found is not None:
            self._cache[key] = (found, now)
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
            self._touch(found, now)
        return found

    def _touch(self, principal: Principal, now: float) -> None:
        if now - self._used.get(principal.token_id, -1e9) >= 60.0:
            self._used[principal.token_id] = now
            self.store.touch_token(principal.token_id)


class Buckets:
    """Token buckets by key, pure state given ``now``: a bucket holds at most ``burst``
    tokens and refills at ``rate`` a second (both given per call, so that each key may have
    its own). At most ``size`` keys are kept: those changed least lately go first (a
    forgotten key starts again full)."""

    def __init__(self, size: int = 100_000) -> None:
        self.size = size
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def _level(self, key: str, rate: float, burst: float, now: float) -> float:
        bucket = self._buckets.get(key)
        if bucket is None:
            return burst
        return min(burst, bucket[0] + (now - bucket[1]) * rate)

    def wait(self, key: str, rate: float, burst: float, now: float) -> float:
        """0.0 when ``key`` holds a token now, else the seconds until it will (takes none)."""
        with self._lock:
            level = self._level(key, rate, burst, now)
        return 0.0 if level >= 1.0 else (1.0 - level) / rate

    def take(self, key: str, rate: float, burst: float, now: float, force: bool = False) -> float:
        """Take one token: 0.0 when taken, else the seconds until one would be. ``force``:
        take it anyway (the bucket empties, never below zero)."""
        with self._lock:
            level = self._level(key, rate, burst, now)
            taken = level >= 1.0 or force
            self._buckets[key] = (max(0.0, level - 1.0) if taken else level, now)
            self._buckets.move_to_end(key)
            while len(self._buckets) > self.size:
                self._buckets.popitem(last=False)
        return 0.0 if level >= 1.0 else (1.0 - level) / rate


class RateLimiter:
    """Requests per API token: a bucket of ``rate`` requests/s with a burst of one second's
    worth (at least one request)."""

    def __init__(self, size: int = 100_000) -> None:
        self._buckets = Buckets(size)

    def take(self, key: str, rate: float, now: float | None = None) -> float:
        """Take one request; 0.0 when allowed, else the seconds until one would be."""
        now = time.monotonic() if now is None else now
        return self._buckets.take(key, rate, max(1.0, rate), now)


class FailureLimiter:
    """Failed tokens per client address: a bucket of ``2 x per_min`` failures that refills at
    ``per_min`` a minute. :meth:`wait` before verifying an unknown token, :meth:`fail` after
    one failed. At most ``size`` addresses are kept (those that failed least lately go
    first)."""

    def __init__(self, per_min: float, size: int = 100_000) -> None:
        if per_min <= 0:
            raise ValueError(f"failed tokens per minute must be > 0, got {per_min}")
        self.rate = per_min / 60.0
        self.burst = max(1.0, 2.0 * per_min)
        self._buckets = Buckets(size)

    def __len__(self) -> int:
        """How many addresses are kept."""
        return len(self._buckets)

    def wait(self, key: str, now: float | None = None) -> float:
        """0.0 when ``key`` may try a token now, else the seconds until it may."""
        now = time.monotonic() if now is None else now
        return self._buckets.wait(key, self.rate, self.burst, now)

    def fail(self, key: str, now: float | None = None) -> None:
        """``key`` presented a token that is not one."""
        now = time.monotonic() if now is None else now
        self._buckets.take(key, self.rate, self.burst, now, force=True)


async def send_json(
    send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


def _mb(n: int) -> str:
    return f"{n / 1e6:g} MB" if n >= 1e6 else f"{n} bytes"


class Guard:
    """The ASGI middleware of the module's doc."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        tokens: TokenCache,
        limiter: RateLimiter,
        rate_per_s: float | None,
        max_body_bytes: int,
        max_binary_bytes: int | None = None,
        public: tuple[str, ...] = ("/healthz",),
        failures: FailureLimiter | None = None,
    ) -> None:
        self.app = app
        self.tokens = tokens
        self.failures = failures
        self.limiter = limiter
        self.rate_per_s = rate_per_s
        self.max_body_bytes = max_body_bytes
        self.max_binary_bytes = max_body_bytes if max_binary_bytes is None else max_binary_bytes
        self.public = frozenset(public) | frozenset(PUBLIC_DASHBOARD)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.public:
            await self.app(scope, receive, send)
            return
        auth = length = ctype = None
        for k, v in scope["headers"]:
            if k == b"authorization":
                auth = v
            elif k == b"content-length":
                length = v
            elif k == b"content-type":
                ctype = v
        if auth is None or auth[:7].lower() != b"bearer ":
            await send_json(send, 401, {
                "error": "unauthorized",
                "detail": "missing token: send 'Authorization: Bearer <token>' "
                          "(make one with 'hetfaas token create NAMESPACE')",
            }, {"WWW-Authenticate": "Bearer"})  # fmt: skip
            return
        token = auth[7:].strip().decode("latin-1")
        client = scope.get("client")
        address = str(client[0]) if client else "?"
        key = self.tokens.key(token)
        if self.failures is not None and not self.tokens.known(key):
            wait = self.failures.wait(address)
            if wait > 0:
                await send_json(send, 429, {
                    "error": "too_many_failed_tokens", "retry_after_s": round(wait, 3),
                    "detail": f"too many invalid tokens from {address}: retry after "
                              f"{wait:.1f} s",
                }, {"Retry-After": str(max(1, math.ceil(wait)))})  # fmt: skip
                return
        principal = await self.tokens.principal(token, key)
        if principal is None:
            if self.failures is not None:
                self.failures.fail(address)
            await send_json(send, 401, {
                "error": "unauthorized", "detail": "invalid or revoked token",
            }, {"WWW-Authenticate": 'Bearer error="invalid_token"'})  # fmt: skip
            return
        rate = principal.rate_per_s or self.rate_per_s
        if rate:
            wait = self.limiter.take(principal.token_id, rate)
            if wait > 0:
                after = max(1, math.ceil(wait))
                await send_json(send, 429, {
                    "error": "rate_limited", "limit_per_s": rate, "retry_after_s": round(wait, 3),
                    "detail": f"rate limited: this token may make {rate:g} requests/s; "
                              f"retry after {wait:.3f} s",
                }, {"Retry-After": str(after)})  # fmt: skip
                return
        binary = False
        if ctype is not None and scope["method"] in ("POST", "PUT", "PATCH"):
            media = ctype.split(b";")[0].strip().lower()
            binary = media in BINARY_MEDIA and scope["path"].encode().endswith(_BINARY_ROUTES)
            if not binary and media != b"application/json" and not media.endswith(b"+json"):
                await send_json(send, 415, {
                    "error": "unsupported_media_type",
                    "detail": "bodies are JSON (application/json), or on the invoke routes an "
                              "array (application/octet-stream, application/x-npy, "
                              f"application/x-safetensors); got {media.decode('latin-1')!r}",
                })  # fmt: skip
                return
            if binary and length is None:
                await send_json(send, 411, {
                    "error": "length_required",
                    "detail": "a binary body needs a Content-Length",
                })  # fmt: skip
                return
        limit = principal.max_body_bytes or (
            self.max_binary_bytes if binary else self.max_body_bytes
        )
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                size = -1
            if size > limit:
                await self._too_large(send, limit, size)
                return
        elif scope["method"] in ("POST", "PUT", "PATCH"):
            body, more = bytearray(), True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    break
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > limit:
                    await self._too_large(send, limit, None)
                    return
            receive = _replay(bytes(body), receive)
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    async def _too_large(self, send: Send, limit: int, size: int | None) -> None:
        got = f"{size} bytes" if size is not None else f"more than {limit} bytes"
        await send_json(send, 413, {
            "error": "body_too_large", "limit_bytes": limit,
            "detail": f"request body too large: {got}; this token's limit is {limit} bytes "
                      f"({_mb(limit)})",
        })  # fmt: skip


def _replay(body: bytes, then: Receive) -> Receive:
    """The body read already, then the connection's own messages (its disconnect)."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await then()

    return receive


__all__ = [
    "PUBLIC_DASHBOARD", "PUBLIC_DOCS", "Buckets", "FailureLimiter", "Guard", "RateLimiter",
    "TokenCache",
]  # fmt: skip
