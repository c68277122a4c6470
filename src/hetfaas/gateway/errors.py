"""The gateway's errors, in hetfaas's one error tree (:mod:`hetfaas.exceptions`).

::

    HetfaasError
    ├── GatewayError                  a request the gateway refuses (carries its HTTP status)
    │   ├── Unauthorized              401: no token, or one that is unknown or revoked
    │   ├── NotFound                  404: no such function or invocation in this namespace
    │   ├── Conflict                  409: the invocation already ended
    │   ├── Forbidden                 403: a module outside the gateway's allowed modules
    │   ├── BodyTooLarge              413: a request body over the token's limit
    │   ├── RateLimited               429: over the token's requests per second
    │   └── BadInput                  422: a body or parameter the gateway cannot use
    ├── StoreError                    the store cannot be opened, or another gateway holds it
    ├── CallbackRefused               a callback the rules (--callback-allow) do not let go
    └── CallError
        └── GatewayRestarted          the gateway restarted while a non-idempotent call ran
"""

from __future__ import annotations

from ..exceptions import CallError, HetfaasError


class GatewayError(HetfaasError):
    """A request the gateway refuses; ``status`` is its HTTP status, ``code`` a short name."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        self.headers = dict(headers or {})
        # a message quoting a request's text may hold lone surrogates (JSON's "\ud800"):
        # escaped, so that the error's JSON body can be encoded as UTF-8
        super().__init__(str(message).encode("utf-8", "backslashreplace").decode("utf-8"))


class Unauthorized(GatewayError):
    status, code = 401, "unauthorized"


class Forbidden(GatewayError):
    status, code = 403, "forbidden"


class NotFound(GatewayError):
    status, code = 404, "not_found"


class Conflict(GatewayError):
    status, code = 409, "conflict"


class BodyTooLarge(GatewayError):
    status, code = 413, "body_too_large"


class BadInput(GatewayError):
    status, code = 422, "bad_input"


class RateLimited(GatewayError):
    status, code = 429, "rate_limited"


class StoreError(HetfaasError):
    """The gateway's store cannot be opened or used (or another gateway holds it)."""


class CallbackRefused(HetfaasError):
    """The callback rules (``--callback-allow``, see :mod:`.callbacks`) do not let the gateway
    POST to this URL's host."""


RESTART_REASON = (
    "the gateway restarted while the call ran; the function is not idempotent, "
    "so it was not run again"
)


class GatewayRestarted(CallError):
    """The gateway restarted while the call ran, and its function is not idempotent: it was
    not run again (see :data:`RESTART_REASON`)."""


__all__ = [
    "RESTART_REASON",
    "BadInput",
    "BodyTooLarge",
    "CallbackRefused",
    "Conflict",
    "Forbidden",
    "GatewayError",
    "GatewayRestarted",
    "NotFound",
    "RateLimited",
    "StoreError",
    "Unauthorized",
]
