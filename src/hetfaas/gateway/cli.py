"""``hetfaas serve`` and ``hetfaas token``: the gateway and its API tokens.

``hetfaas serve [--host 127.0.0.1] [--port 8000] [--backend local] [--store PATH|DSN]
[--max-body-mb 5] [--rate R/s] [--allow-module PREFIX]...``

``--store postgresql://USER@HOST/DB`` (or ``postgres://``) serves a PostgreSQL store, which
several gateways may share (:mod:`.store_pg`; ``pip install 'hetfaas[postgres]'``); it needs
``--results-dir``, a folder every gateway of the store sees, and takes ``--gateway-id``
(default ``HOST:PORT``) and ``--lease-s``.

``hetfaas token create NAMESPACE [--label L] [--rate R/s] [--max-body-mb M] | list |
revoke ID  [--store PATH|DSN]``: ``create`` prints the token once, on stdout; only its salted hash
is stored.

FastAPI and uvicorn (``pip install 'hetfaas[serve]'``) are imported only when serving.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from ..exceptions import ConfigurationError


def default_store() -> Path:
    """``$HETFAAS_GATEWAY_STORE``, else ``$XDG_STATE_HOME/hetfaas/gateway.db``
    (``~/.local/state/hetfaas/gateway.db``)."""
    env = os.environ.get("HETFAAS_GATEWAY_STORE")
    if env:
        return Path(env)
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(state) / "hetfaas" / "gateway.db"


def default_location() -> str:
    """The store when ``--store`` is not given: :func:`default_store`, or the PostgreSQL
    DSN that ``$HETFAAS_GATEWAY_STORE`` holds."""
    from .store_pg import is_dsn

    env = os.environ.get("HETFAAS_GATEWAY_STORE", "")
    return env if is_dsn(env) else str(default_store())


def open_store(args: argparse.Namespace, *, serving: bool = False) -> Any:
    """The store that ``--store`` names: a :class:`~.store_pg.PgStore` for a
    ``postgresql://`` DSN, else a SQLite :class:`~.store.Store` (not locked for a gateway)."""
    from .store_pg import is_dsn

    location = args.store or default_location()
    results_dir = getattr(args, "results_dir", None)
    if is_dsn(location):
        from .store_pg import PgStore

        if serving and not results_dir:
            raise ConfigurationError(
                "--results-dir is needed with a PostgreSQL store: the folder of large results "
                "and binary inputs, which every gateway of the store must see"
            )
        if not serving:
            return PgStore(location, results_dir=results_dir)
        return PgStore(
            location,
            results_dir=results_dir,
            retention_days=args.retention_days,
            gateway_id=args.gateway_id or f"{socket.gethostname()}:{args.port}",
            lease_s=args.lease_s,
        )
    from .store import Store

    if not serving:
        return Store(location)
    return Store(
        location,
        retention_days=args.retention_days,
        synchronous=args.sync,
        results_dir=results_dir,
    )


def parse_rate(text: str) -> float:
    """``100``, ``100/s`` or ``6000/min`` -> requests per second."""
    value, _, unit = text.strip().partition("/")
    per = {"": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}.get(unit)
    try:
        rate = float(value) / per if per else -1.0
    except ValueError:
        rate = -1.0
    if not rate > 0:
        raise argparse.ArgumentTypeError(f"a rate is N, N/s, N/min or N/h with N > 0: {text!r}")
    return rate


def _mb(text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"megabytes must be > 0, got {text!r}")
    return int(value * 1e6)


def _store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store",
        default=None,
        metavar="PATH|DSN",
        help="the SQLite store, or a PostgreSQL one (postgresql://...) several gateways may "
        f"share (default {default_store()}, or $HETFAAS_GATEWAY_STORE)",
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``hetfaas serve``'s options."""
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--backend", default="local", help="hetfaas backend (default local)")
    p.add_argument(
        "--backend-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the backend (VALUE as JSON, else a string); repeat",
    )
    _store_arg(p)
    p.add_argument(
        "--results-dir",
        default=None,
        metavar="DIR",
        help="large results and binary inputs (default: beside a SQLite store; needed with "
        "a PostgreSQL one: a folder every gateway of the store sees)",
    )
    p.add_argument(
        "--gateway-id",
        default=None,
        metavar="ID",
        help="this gateway's id in a PostgreSQL store (default HOST:PORT; restarted with the "
        "same id, it takes back its calls at once)",
    )
    p.add_argument(
        "--lease-s",
        type=float,
        default=15.0,
        metavar="S",
        help="a PostgreSQL store's gateway lease: a gateway silent this long is dead, and a "
        "peer takes over its calls (15)",
    )
    p.add_argument(
        "--max-body-mb",
        type=_mb,
        default=5_000_000,
        dest="max_body_bytes",
        metavar="MB",
        help="largest JSON request body of a token without its own (5)",
    )
    p.add_argument(
        "--max-binary-mb",
        type=_mb,
        default=1 << 30,
        dest="max_binary_bytes",
        metavar="MB",
        help="largest array body (streamed to the store's disk) of a token without its own "
        "limit (1073.74: 1 GiB)",
    )
    p.add_argument(
        "--rate",
        type=parse_rate,
        default=None,
        metavar="R/s",
        help="requests/s of a token without its own (default: no limit)",
    )
    p.add_argument(
        "--allow-module",
        action="append",
        default=[],
        metavar="PREFIX",
        help="modules functions may be deployed from ('*': any); repeat",
    )
    p.add_argument(
        "--max-inflight",
        type=int,
        default=None,
        metavar="N",
        help="calls handed to the backend at once (default: its max_workers)",
    )
    p.add_argument(
        "--thread-delivery",
        action="store_true",
        help="results reach the server from the backend's thread, not its event loop "
        "(slower; for comparison)",
    )
    p.add_argument(
        "--max-wait",
        type=float,
        default=300.0,
        metavar="S",
        help="longest ?wait= of a blocking invoke (300)",
    )
    p.add_argument(
        "--retention-days",
        type=float,
        default=14.0,
        help="finished invocations are kept this long (14)",
    )
    p.add_argument(
        "--sync",
        choices=("normal", "full"),
        default="normal",
        help="SQLite synchronous: normal survives a crash of the gateway, full a "
        "power loss too (an fsync per commit)",
    )
    p.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="allow browsers from ORIGIN (CORS is off unless given); repeat",
    )
    p.add_argument(
        "--failed-tokens",
        type=float,
        default=10.0,
        metavar="PER_MIN",
        help="invalid tokens a client address may send per minute, after a burst of twice "
        "that (10; 0: no limit); past it 429 before any token is checked",
    )
    p.add_argument(
        "--callback-allow",
        action="append",
        default=[],
        metavar="HOST",
        help="callbacks may go only to HOST: a name or pattern (hooks.example.org, "
        "*.example.org), an address or a network (10.0.0.0/8); repeat. Without it: "
        "anywhere but link-local (cloud metadata) and multicast addresses",
    )
    p.add_argument(
        "--no-public-docs",
        action="store_true",
        help="the OpenAPI schema and /docs need a token too",
    )
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


def add_token_arguments(p: argparse.ArgumentParser) -> None:
    """``hetfaas token``'s subcommands."""
    sub = p.add_subparsers(dest="token_command", required=True)
    create = sub.add_parser("create", help="a new token of NAMESPACE (printed once)")
    create.add_argument("namespace")
    create.add_argument("--label", default=None, help="a note shown by list")
    create.add_argument(
        "--rate",
        type=parse_rate,
        default=None,
        metavar="R/s",
        help="this token's requests/s (default: the gateway's)",
    )
    create.add_argument(
        "--max-body-mb",
        type=_mb,
        default=None,
        dest="max_body_bytes",
        metavar="MB",
        help="this token's largest body (default: the gateway's)",
    )
    _store_arg(create)
    lst = sub.add_parser("list", help="tokens (never their secrets)")
    lst.add_argument("--namespace", default=None)
    lst.add_argument("--json", action="store_true")
    _store_arg(lst)
    revoke = sub.add_parser("revoke", help="revoke a token by its id")
    revoke.add_argument("id")
    _store_arg(revoke)


def _backend_options(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigurationError(f"--backend-option takes KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def run_serve(args: argparse.Namespace) -> int:
    from .._executor import Executor
    from .app import create_app
    from .server import serve

    store = open_store(args, serving=True)
    path = getattr(store, "location", None) or store.path
    try:
        store.lock_for_gateway()
    except BaseException:
        store.close()
        raise
    options = _backend_options(args.backend_option)
    if args.backend == "local":
        options.setdefault("capture_output", True)  # each call's stdout/stderr in its record
    executor = Executor(args.backend, **options)
    try:
        app = create_app(
            store,
            executor,
            allowed_modules=tuple(args.allow_module),
            max_body_bytes=args.max_body_bytes,
            max_binary_bytes=args.max_binary_bytes,
            rate_per_s=args.rate,
            max_wait_s=args.max_wait,
            max_inflight=args.max_inflight,
            cors_origins=tuple(args.cors_origin),
            callback_allow=tuple(args.callback_allow),
            failed_tokens_per_min=args.failed_tokens or None,
            public_docs=not args.no_public_docs,
            loop_delivery=not args.thread_delivery,
        )
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            print(
                f"hetfaas serve: listening on {args.host}: reachable beyond this machine, "
                "without TLS; put a TLS proxy in front",
                file=sys.stderr,
            )
        if not args.allow_module:
            print("hetfaas serve: no --allow-module: nothing can be deployed", file=sys.stderr)
        print(
            f"hetfaas serve: http://{args.host}:{args.port} (store {path}, backend {args.backend})",
            file=sys.stderr,
            flush=True,
        )
        serve(app, args.host, args.port, args.log_level)
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        store.close()
    return 0


def run_token(args: argparse.Namespace) -> int:
    from .store import iso

    with open_store(args) as store:
        if args.token_command == "create":
            info, token = store.create_token(
                args.namespace,
                label=args.label,
                rate_per_s=args.rate,
                max_body_bytes=args.max_body_bytes,
            )
            print(
                f"token {info.id} of namespace {info.namespace!r} (shown once; keep it):",
                file=sys.stderr,
            )
            print(token)
            return 0
        if args.token_command == "list":
            tokens = store.list_tokens(args.namespace)
            if args.json:
                print(json.dumps([t.__dict__ for t in tokens], indent=1))
                return 0
            print(
                f"{'ID':<13} {'NAMESPACE':<20} {'CREATED':<25} {'STATE':<8} {'LAST USED':<25} LABEL"
            )
            for t in tokens:
                state = "revoked" if t.revoked_at else "active"
                print(
                    f"{t.id:<13} {t.namespace:<20} {iso(t.created_at):<25} {state:<8} "
                    f"{iso(t.last_used_at) or '-':<25} {t.label or ''}"
                )
            return 0
        if store.revoke_token(args.id):
            print(f"revoked {args.id}", file=sys.stderr)
            return 0
        print(f"hetfaas token: no active token {args.id!r}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace) -> int:
    """``hetfaas serve`` or ``hetfaas token``, by ``args.command``."""
    if getattr(args, "token_command", None):
        return run_token(args)
    return run_serve(args)


def build_parser() -> argparse.ArgumentParser:
    """``python -m hetfaas.gateway serve|token ...`` (the same as ``hetfaas serve|token``)."""
    parser = argparse.ArgumentParser(prog="python -m hetfaas.gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_arguments(sub.add_parser("serve", help="the HTTP gateway"))
    add_token_arguments(sub.add_parser("token", help="API tokens"))
    return parser


def main(argv: list[str] | None = None) -> int:
    from ..exceptions import HetfaasError

    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except HetfaasError as exc:
        print(f"hetfaas: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


__all__ = [
    "add_arguments",
    "add_token_arguments",
    "default_location",
    "default_store",
    "main",
    "open_store",
    "parse_rate",
    "run",
]
