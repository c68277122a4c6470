"""What the gateway's two stores share: the schema, the batching writer, tokens, functions,
invocation queries, the retention purge and result files.

:class:`BaseStore` holds it; :class:`~hetfaas.gateway.store.Store` (SQLite, one gateway) and
:class:`~hetfaas.gateway.store_pg.PgStore` (PostgreSQL, several gateways) add their
connections, their dialect and how a gateway holds the store. Every statement here is SQL the
two engines share (``?`` placeholders, ``INSERT ... ON CONFLICT DO NOTHING``, ``RETURNING``);
the schema's two column types that differ are filled in by each store (:func:`schema`).

Writes are serialised by one commit lock (:meth:`BaseStore.submit`): each operation is a
function of the connection, run in a savepoint of a transaction shared with every other
operation waiting at that moment (group commit), so a burst of calls costs one commit, not one
each. The thread that submits commits itself when the lock is free (no hop to another thread);
when it is taken, a writer thread takes the operation into the next commit. The operation's
``after`` hook runs once the commit is done: whatever it does (hand a call to an executor,
answer a request) happens only after the transition is durable.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import hashlib
import hmac
import json
import logging
import os
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import BadInput, StoreError

_log = logging.getLogger("hetfaas.gateway")

SCHEMA_VERSION = 2  # 2: invocations.owner (the gateway that holds the call)
RETENTION_DAYS = 14.0
INLINE_RESULT_BYTES = 256 * 1024  # larger results go to a file in the results folder
LOG_BYTES = 1 << 20  # stdout and stderr kept per call (the tail past this)
TOKEN_PREFIX = "hft_"
TOKEN_ITERATIONS = 60_000  # PBKDF2 rounds; the secret is 256 random bits, this is defence
FINAL = ("COMPLETED", "FAILED", "CANCELLED")
STATES = ("QUEUED", "RUNNING", *FINAL)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS namespaces (name TEXT PRIMARY KEY, created_at {real} NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    namespace TEXT NOT NULL REFERENCES namespaces(name),
    salt {blob} NOT NULL,
    hash {blob} NOT NULL,
    iterations INTEGER NOT NULL,
    label TEXT,
    created_at {real} NOT NULL,
    revoked_at {real},
    last_used_at {real},
    rate_per_s {real},
    max_body_bytes INTEGER
);
CREATE TABLE IF NOT EXISTS functions (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    import_path TEXT NOT NULL,
    idempotent INTEGER NOT NULL,
    resources TEXT NOT NULL,
    created_at {real} NOT NULL,
    updated_at {real} NOT NULL,
    PRIMARY KEY (namespace, name)
);
CREATE TABLE IF NOT EXISTS invocations (
    id TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    function TEXT NOT NULL,
    state TEXT NOT NULL,
    submitted_at {real} NOT NULL,
    dispatched_at {real},
    started_at {real},
    finished_at {real},
    attempts INTEGER NOT NULL DEFAULT 0,
    input TEXT NOT NULL,
    result TEXT,
    result_path TEXT,
    error_type TEXT,
    error_message TEXT,
    error_traceback TEXT,
    timings TEXT,
    usage TEXT,
    stdout TEXT,
    stderr TEXT,
    callback_url TEXT,
    callback TEXT,
    batch TEXT,
    owner TEXT
);
CREATE INDEX IF NOT EXISTS inv_ns_time ON invocations (namespace, submitted_at);
CREATE INDEX IF NOT EXISTS inv_ns_fn_time ON invocations (namespace, function, submitted_at);
CREATE INDEX IF NOT EXISTS inv_open ON invocations (state) WHERE state IN ('QUEUED', 'RUNNING');
CREATE INDEX IF NOT EXISTS inv_finished ON invocations (finished_at);
"""


def schema(real: str, blob: str) -> list[str]:
    """The schema's statements, with the engine's names of a float64 and a bytes column."""
    text = _SCHEMA.format(real=real, blob=blob)
    return [s.strip() for s in text.split(";") if s.strip()]


_LIST_COLUMNS = (
    "id, namespace, function, state, submitted_at, dispatched_at, started_at, finished_at, "
    "attempts, error_type, error_message, error_traceback, timings, usage, stdout, stderr, "
    "callback_url, callback, batch"
)
RECOVER_COLUMNS = "id, namespace, function, state, submitted_at, attempts, callback_url, batch"


@dataclass(frozen=True)
class Principal:
    """Who a verified token speaks for, and its limits (None: the gateway's defaults)."""

    token_id: str
    namespace: str
    rate_per_s: float | None = None
    max_body_bytes: int | None = None


@dataclass(frozen=True)
class TokenInfo:
    """A token as ``hetfaas token list`` shows it (never its secret)."""

    id: str
    namespace: str
    label: str | None
    created_at: float
    revoked_at: float | None
    last_used_at: float | None
    rate_per_s: float | None
    max_body_bytes: int | None


@dataclass(frozen=True)
class FunctionRecord:
    """A deployed function: ``import_path`` is ``pkg.mod:fn``; ``resources`` are the
    :class:`hetfaas.Resources` fields its calls get."""

    namespace: str
    name: str
    import_path: str
    idempotent: bool
    resources: dict[str, Any]
    created_at: float
    updated_at: float

    def as_api(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "import_path": self.import_path,
            "idempotent": self.idempotent,
            "resources": self.resources,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }


def iso(t: float | None) -> str | None:
    """A Unix time as ISO 8601 UTC with milliseconds (None stays None)."""
    if t is None:
        return None
    sec = int(t)
    prefix = _iso_seconds.get(sec)
    if prefix is None:
        if len(_iso_seconds) > 4096:
            _iso_seconds.clear()
        prefix = _iso_seconds[sec] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return f"{prefix}.{int((t - sec) * 1000):03d}Z"


_iso_seconds: dict[int, str] = {}


def parse_time(value: str | float | None) -> float | None:
    """Unix seconds, or an ISO 8601 time (naive means UTC); None stays None."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadInput(f"not a time: {value!r} (give Unix seconds or ISO 8601)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


_ids = random.Random(secrets.randbits(128))  # ids are not secrets: namespaces guard them
os.register_at_fork(after_in_child=lambda: _ids.seed(secrets.randbits(128)))


def new_invocation_id() -> str:
    """Sortable by submission time (milliseconds first), unique (64 random bits)."""
    return f"{int(time.time() * 1000):012x}{_ids.getrandbits(64):016x}"


def _hash(secret: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, iterations)


def split_token(token: str) -> tuple[str, str] | None:
    """``hft_<12 hex id>_<secret>`` -> (id, secret); None for anything else."""
    if not token.startswith(TOKEN_PREFIX) or len(token) < len(TOKEN_PREFIX) + 14:
        return None
    body = token[len(TOKEN_PREFIX) :]
    token_id, sep, secret = body[:12], body[12:13], body[13:]
    if sep != "_" or not secret or any(c not in "0123456789abcdef" for c in token_id):
        return None
    return token_id, secret


_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def check_name(name: str, what: str) -> str:
    """A namespace or function name: 1-100 of letters, digits, ``_ . -``."""
    if not isinstance(name, str) or not 1 <= len(name) <= 100 or not set(name) <= _NAME_CHARS:
        raise BadInput(f"{what} must be 1-100 letters, digits, '_', '.' or '-', got {name!r}")
    return name


class BaseStore:
    """The gateway's durable store, whatever the database (see the module).

    A subclass sets ``_db_errors`` (the exceptions of its driver), ``results_dir``,
    ``retention_s`` and ``inline_result_bytes``, calls :meth:`_init_writer`, and gives
    :meth:`_connect` (a connection with sqlite3's ``execute``/``executemany``, whose rows are
    indexed by position and by name), :meth:`read` and :meth:`lock_for_gateway`.
    """

    #: ``"sqlite"`` or ``"postgresql"``: for the rare query the two engines cannot share.
    dialect = "sqlite"
    #: The gateway that holds the calls this store's engine accepts (None: a store that only
    #: one gateway serves, which takes back every unfinished call when it starts).
    owner_id: str | None = None
    results_dir: Path | None
    retention_s: float
    inline_result_bytes: int
    _db_errors: tuple[type[BaseException], ...] = ()
    _BEGIN = "BEGIN"
    _JOIN_STATEMENTS = False  # may the transaction's own statements go in one round trip

    def _init_writer(self) -> None:
        self._queue: collections.deque[Any] = collections.deque()
        self._commit_lock = threading.Lock()  # not reentrant: a hook's write is queued
        self._event = threading.Event()
        self._wconn: Any = None
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        self._stop = False
        self._closed = False

    # ------------------------------------------------------------------ the subclass's part

    def _connect(self) -> Any:
        raise NotImplementedError

    def _broken(self, conn: Any) -> bool:
        """Whether the writer's connection must be made again (a lost server connection)."""
        return False

    def read(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        """Rows of a query (``?`` placeholders), each indexed by position and by name."""
        raise NotImplementedError

    def lock_for_gateway(self) -> None:
        """Take the store for a gateway process (what that means is the store's)."""
        raise NotImplementedError

    def take_orphans(self, conn: Any) -> Sequence[Any]:
        """In a write operation: the unfinished invocations this gateway takes back, in
        submission order (columns :data:`RECOVER_COLUMNS`). A store one gateway serves takes
        every QUEUED and RUNNING call; a shared store overrides this."""
        return conn.execute(
            f"SELECT {RECOVER_COLUMNS} FROM invocations WHERE state IN ('QUEUED', 'RUNNING')"
            " ORDER BY submitted_at, id"
        ).fetchall()

    def watch_peers(
        self,
        on_tick: Callable[[], None] | None = None,
        on_orphans: Callable[[], None] | None = None,
        on_lost: Callable[[], None] | None = None,
    ) -> bool:
        """Keep this gateway's lease on a store several gateways share, calling ``on_tick``
        at each heartbeat, ``on_orphans`` when a dead peer left calls (take them with
        :meth:`take_orphans`) and ``on_lost`` if this gateway's own lease expired. False
        (and nothing done) for a store only one gateway serves."""
        return False

    # ------------------------------------------------------------------ the writer

    def submit(
        self,
        op: Callable[[Any], Any],
        after: Callable[[Any], None] | None = None,
    ) -> cf.Future[Any]:
        """Run ``op(conn)`` in a transaction; the future holds its return value once
        committed, after ``after(value)`` ran (in the thread that committed).

        The calling thread commits itself when no other commit is under way (no hop to
        another thread), with whatever else is queued; otherwise the writer thread takes the
        operation into its next commit. So ``op`` and ``after`` run one at a time, under the
        commit lock, in some thread: they must not wait on another write's future."""
        if self._closed:
            raise StoreError("the store is closed")
        fut: cf.Future[Any] = cf.Future()
        self._queue.append((op, after, fut))
        if self._commit_lock.acquire(blocking=False):
            try:
                self._drain()
            finally:
                self._commit_lock.release()
            if self._queue:  # queued while this thread let go of the lock
                self._wake()
        else:
            self._wake()
        return fut

    def write(self, op: Callable[[Any], Any]) -> Any:
        """:meth:`submit` and wait for the commit."""
        return self.submit(op).result()

    def _wake(self) -> None:
        if self._writer is None:
            with self._writer_lock:
                if self._writer is None:
                    self._writer = threading.Thread(
                        target=self._write_loop, name="hetfaas-store", daemon=True
                    )
                    self._writer.start()
        self._event.set()

    def _drain(self) -> None:
        """Commit everything queued, in batches (the caller holds the commit lock)."""
        while self._queue:
            batch = []
            with contextlib.suppress(IndexError):
                while len(batch) < 1024:
                    batch.append(self._queue.popleft())
            try:
                if self._wconn is not None and self._broken(self._wconn):
                    with contextlib.suppress(Exception):
                        self._wconn.close()
                    self._wconn = None
                if self._wconn is None:
                    self._wconn = self._connect()
            except Exception as exc:
                for _, _, fut in batch:
                    fut.set_exception(StoreError(f"the store cannot be reached: {exc}"))
                continue
            self._run_batch(self._wconn, batch)

    def _write_loop(self) -> None:
        while True:
            self._event.wait()
            self._event.clear()
            with self._commit_lock:
                self._drain()
            if self._stop:
                return

    def _statements(self, conn: Any, statements: list[str]) -> None:
        if self._JOIN_STATEMENTS:
            conn.execute("; ".join(statements))
        else:
            for s in statements:
                conn.execute(s)

    def _run_batch(self, conn: Any, batch: list[Any]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        try:
            if len(batch) == 1:  # alone in its transaction: no savepoint
                conn.execute(self._BEGIN)
                try:
                    outcomes.append((True, batch[0][0](conn)))
                except Exception as exc:
                    outcomes.append((False, exc))
                conn.execute("COMMIT" if outcomes[0][0] else "ROLLBACK")
            else:
                pending = [self._BEGIN]
                for op, _, _ in batch:
                    pending.append("SAVEPOINT op")
                    self._statements(conn, pending)
                    try:
                        outcomes.append((True, op(conn)))
                        pending = ["RELEASE op"]
                    except Exception as exc:
                        pending = ["ROLLBACK TO op", "RELEASE op"]
                        outcomes.append((False, exc))
                self._statements(conn, [*pending, "COMMIT"])
        except self._db_errors as exc:
            with contextlib.suppress(*self._db_errors):
                conn.execute("ROLLBACK")
            _log.error("hetfaas gateway: a store commit failed: %s", exc)
            for _, _, fut in batch:
                fut.set_exception(StoreError(f"the store could not commit: {exc}"))
            return
        for (ok, value), (_, after, fut) in zip(outcomes, batch, strict=True):
            if ok and after is not None:
                try:
                    after(value)
                except Exception:
                    _log.exception("hetfaas gateway: an after-commit hook failed")
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    def _close_writer(self) -> None:
        """Stop the writer after the writes queued before this; close its connection."""
        self._stop = True
        if self._writer is not None:
            self._event.set()
            self._writer.join(timeout=30)
        with self._commit_lock:
            self._drain()
            if self._wconn is not None:
                with contextlib.suppress(*self._db_errors):
                    self._wconn.close()
                self._wconn = None

    def close(self) -> None:
        """Stop the writer (after the writes queued before this) and close every connection."""
        if self._closed:
            return
        self._closed = True
        self._close_writer()

    def __enter__(self) -> BaseStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ tokens

    def create_token(
        self,
        namespace: str,
        *,
        label: str | None = None,
        rate_per_s: float | None = None,
        max_body_bytes: int | None = None,
    ) -> tuple[TokenInfo, str]:
        """A new token of ``namespace`` (made if missing): its record, and the token itself,
        which is shown this once and never stored (only its salted hash is)."""
        check_name(namespace, "namespace")
        if rate_per_s is not None and not rate_per_s > 0:
            raise BadInput(f"rate must be > 0 requests/s, got {rate_per_s}")
        if max_body_bytes is not None and max_body_bytes < 1:
            raise BadInput(f"max body must be > 0 bytes, got {max_body_bytes}")
        token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        salt = secrets.token_bytes(16)
        digest = _hash(secret, salt, TOKEN_ITERATIONS)
        now = time.time()

        def op(conn: Any) -> None:
            conn.execute(
                "INSERT INTO namespaces (name, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (namespace, now),
            )
            conn.execute(
                "INSERT INTO tokens (id, namespace, salt, hash, iterations, label, created_at,"
                " rate_per_s, max_body_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (token_id, namespace, salt, digest, TOKEN_ITERATIONS, label, now,
                 rate_per_s, max_body_bytes),
            )  # fmt: skip

        self.write(op)
        info = TokenInfo(token_id, namespace, label, now, None, None, rate_per_s, max_body_bytes)
        return info, f"{TOKEN_PREFIX}{token_id}_{secret}"

    def list_tokens(self, namespace: str | None = None) -> list[TokenInfo]:
        """Every token (of ``namespace``), oldest first; never a secret."""
        sql = (
            "SELECT id, namespace, label, created_at, revoked_at, last_used_at, rate_per_s,"
            " max_body_bytes FROM tokens"
        )
        rows = (
            self.read(sql + " WHERE namespace = ? ORDER BY created_at", (namespace,))
            if namespace
            else self.read(sql + " ORDER BY namespace, created_at")
        )
        return [TokenInfo(*row) for row in rows]

    def revoke_token(self, token_id: str) -> bool:
        """Revoke a token by id; False if there is no such token or it was revoked before."""
        now = time.time()

        def op(conn: Any) -> bool:
            cur = conn.execute(
                "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (now, token_id),
            )
            return cur.rowcount == 1

        return bool(self.write(op))

    def verify_token(self, token: str) -> Principal | None:
        """The principal of a valid, unrevoked token; None otherwise (slow on purpose: one
        PBKDF2 per call, so callers cache a success; see :mod:`hetfaas.gateway.auth`)."""
        parts = split_token(token)
        if parts is None:
            return None
        token_id, secret = parts
        rows = self.read(
            "SELECT namespace, salt, hash, iterations, revoked_at, rate_per_s, max_body_bytes"
            " FROM tokens WHERE id = ?",
            (token_id,),
        )
        if not rows:
            _hash(secret, b"0" * 16, TOKEN_ITERATIONS)  # the same time as a wrong secret
            return None
        row = rows[0]
        digest = _hash(secret, bytes(row["salt"]), row["iterations"])
        if not hmac.compare_digest(digest, bytes(row["hash"])) or row["revoked_at"] is not None:
            return None
        return Principal(token_id, row["namespace"], row["rate_per_s"], row["max_body_bytes"])

    def token_revoked(self, token_id: str) -> bool:
        """Whether a token is revoked (or unknown)."""
        rows = self.read("SELECT revoked_at FROM tokens WHERE id = ?", (token_id,))
        return not rows or rows[0]["revoked_at"] is not None

    def touch_token(self, token_id: str) -> None:
        """Record that a token was used now (without waiting for the commit)."""
        now = time.time()
        self.submit(
            lambda conn: conn.execute(
                "UPDATE tokens SET last_used_at = ? WHERE id = ?", (now, token_id)
            )
        )

    # ------------------------------------------------------------------ functions

    def put_function(self, rec: FunctionRecord) -> cf.Future[bool]:
        """Deploy (or redeploy) a function; the future says whether it was new."""

        def op(conn: Any) -> bool:
            cur = conn.execute(
                "UPDATE functions SET import_path = ?, idempotent = ?, resources = ?,"
                " updated_at = ? WHERE namespace = ? AND name = ?",
                (rec.import_path, int(rec.idempotent), json.dumps(rec.resources),
                 rec.updated_at, rec.namespace, rec.name),
            )  # fmt: skip
            if cur.rowcount:
                return False
            conn.execute(
                "INSERT INTO namespaces (name, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (rec.namespace, rec.created_at),
            )
            conn.execute(
                "INSERT INTO functions (namespace, name, import_path, idempotent, resources,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (rec.namespace, rec.name, rec.import_path, int(rec.idempotent),
                 json.dumps(rec.resources), rec.created_at, rec.updated_at),
            )  # fmt: skip
            return True

        return self.submit(op)

    def functions(self, namespace: str | None = None) -> list[FunctionRecord]:
        """The deployed functions (of ``namespace``), by name."""
        sql = (
            "SELECT namespace, name, import_path, idempotent, resources, created_at, updated_at"
            " FROM functions"
        )
        rows = (
            self.read(sql + " WHERE namespace = ? ORDER BY name", (namespace,))
            if namespace is not None
            else self.read(sql + " ORDER BY namespace, name")
        )
        return [
            FunctionRecord(r[0], r[1], r[2], bool(r[3]), json.loads(r[4]), r[5], r[6]) for r in rows
        ]

    # ------------------------------------------------------------------ invocations

    def _result_text(self, row: dict[str, Any]) -> None:
        if row["result_path"]:
            try:
                row["result"] = Path(row["result_path"]).read_text()
            except OSError as exc:
                msg = f"the result file of {row['id']} is unreadable: {exc}"
                raise StoreError(msg) from exc

    def invocation(self, invocation_id: str, namespace: str | None = None) -> dict[str, Any]:
        """One invocation's row as a dict (its result as JSON text, read from its file when
        large); raises KeyError when missing or in another namespace."""
        rows = self.read("SELECT * FROM invocations WHERE id = ?", (invocation_id,))
        if not rows or (namespace is not None and rows[0]["namespace"] != namespace):
            raise KeyError(invocation_id)
        row = dict(rows[0])
        self._result_text(row)
        return row

    def invocations_by_id(
        self, ids: list[str], namespace: str | None = None
    ) -> dict[str, dict[str, Any]]:
        """The rows of ``ids`` that exist (in ``namespace``), without inputs; results as
        :meth:`invocation` gives them, for the ended ones."""
        out: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            marks = ", ".join("?" for _ in part)
            sql = (f"SELECT {_LIST_COLUMNS}, result, result_path FROM invocations"
                   f" WHERE id IN ({marks})")  # fmt: skip
            for r in self.read(sql, part):
                if namespace is None or r["namespace"] == namespace:
                    out[r["id"]] = dict(r)
        for row in out.values():
            self._result_text(row)
        return out

    def invocations(
        self,
        namespace: str,
        *,
        function: str | None = None,
        state: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
        batch: str | None = None,
    ) -> list[dict[str, Any]]:
        """Invocations of a namespace, newest first, without their inputs and results."""
        where, params = ["namespace = ?"], [namespace]
        for column, op, value in (
            ("function", "=", function),
            ("state", "=", state),
            ("submitted_at", ">=", since),
            ("submitted_at", "<", until),
            ("batch", "=", batch),
        ):
            if value is not None:
                where.append(f"{column} {op} ?")
                params.append(value)
        sql = (
            f"SELECT {_LIST_COLUMNS} FROM invocations WHERE {' AND '.join(where)}"
            " ORDER BY submitted_at DESC, id DESC LIMIT ?"
        )
        return [dict(r) for r in self.read(sql, (*params, int(limit)))]

    def counts(self) -> dict[str, int]:
        """Invocations per state (every namespace)."""
        rows = self.read("SELECT state, COUNT(*) FROM invocations GROUP BY state")
        return {r[0]: r[1] for r in rows}

    def result_file(self, invocation_id: str, text: str) -> str:
        """Write a large result in the results folder; its path."""
        if self.results_dir is None:
            raise StoreError("this store has no results folder (give results_dir)")
        self.results_dir.mkdir(parents=True, exist_ok=True)
        path = self.results_dir / f"{invocation_id}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        return str(path)

    def purge(self, now: float | None = None) -> int:
        """Delete invocations that ended more than the retention ago (and their result
        files); the number deleted. Unfinished invocations are never purged."""
        cutoff = (time.time() if now is None else now) - self.retention_s

        def op(conn: Any) -> list[str | None]:
            rows = conn.execute(
                "DELETE FROM invocations WHERE finished_at < ? AND state IN"
                " ('COMPLETED', 'FAILED', 'CANCELLED') RETURNING result_path",
                (cutoff,),
            ).fetchall()
            return [r[0] for r in rows]

        paths = self.write(op)
        for p in paths:
            if p:
                with contextlib.suppress(OSError):
                    os.unlink(p)
        return len(paths)


__all__ = [
    "FINAL",
    "INLINE_RESULT_BYTES",
    "LOG_BYTES",
    "RECOVER_COLUMNS",
    "RETENTION_DAYS",
    "STATES",
    "BaseStore",
    "FunctionRecord",
    "Principal",
    "TokenInfo",
    "check_name",
    "iso",
    "new_invocation_id",
    "parse_time",
    "schema",
    "split_token",
]
