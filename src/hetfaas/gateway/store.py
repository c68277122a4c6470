"""The gateway's durable store: SQLite in WAL mode, one commit at a time, readers per thread.

Tables: ``namespaces``, ``tokens`` (hashed: PBKDF2-HMAC-SHA256 with a salt per token),
``functions`` (deployed by import path) and ``invocations`` (every call the gateway accepted,
its state, times, attempts, input, result or the path of a large result, error, timings,
usage and logs).

Writes are serialised by one commit lock (:meth:`Store.submit`): each operation is a function
of the connection, run in a savepoint of a transaction shared with every other operation
waiting at that moment (group commit), so a burst of calls costs one commit, not one each.
The thread that submits commits itself when the lock is free (no hop to another thread);
when it is taken, a writer thread takes the operation into the next commit. The operation's
``after`` hook runs once the commit is done: whatever it does (hand a call to an executor,
answer a request) happens only after the transition is durable. The gateway's state machine
(:mod:`hetfaas.gateway.engine`) lives in those operations and hooks, under that lock, so it
needs no lock of its own.

``synchronous=NORMAL`` (the default) keeps every committed transaction through a crash of the
process (``kill -9``); ``"FULL"`` keeps them through a power loss too, at an fsync per commit.

The store is also used without a gateway (``hetfaas token ...``): SQLite's busy timeout lets
that process write while a gateway runs. Only one gateway may serve a store at a time
(:meth:`Store.lock_for_gateway`).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import random
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import BadInput, StoreError

_log = logging.getLogger("hetfaas.gateway")

SCHEMA_VERSION = 1
RETENTION_DAYS = 14.0
INLINE_RESULT_BYTES = 256 * 1024  # larger results go to a file beside the database
LOG_BYTES = 1 << 20  # stdout and stderr kept per call (the tail past this)
TOKEN_PREFIX = "hft_"
TOKEN_ITERATIONS = 60_000  # PBKDF2 rounds; the secret is 256 random bits, this is defence
FINAL = ("COMPLETED", "FAILED", "CANCELLED")
STATES = ("QUEUED", "RUNNING", *FINAL)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS namespaces (name TEXT PRIMARY KEY, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    namespace TEXT NOT NULL REFERENCES namespaces(name),
    salt BLOB NOT NULL,
    hash BLOB NOT NULL,
    iterations INTEGER NOT NULL,
    label TEXT,
    created_at REAL NOT NULL,
    revoked_at REAL,
    last_used_at REAL,
    rate_per_s REAL,
    max_body_bytes INTEGER
);
CREATE TABLE IF NOT EXISTS functions (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    import_path TEXT NOT NULL,
    idempotent INTEGER NOT NULL,
    resources TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (namespace, name)
);
CREATE TABLE IF NOT EXISTS invocations (
    id TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    function TEXT NOT NULL,
    state TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    dispatched_at REAL,
    started_at REAL,
    finished_at REAL,
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
    batch TEXT
);
CREATE INDEX IF NOT EXISTS inv_ns_time ON invocations (namespace, submitted_at);
CREATE INDEX IF NOT EXISTS inv_ns_fn_time ON invocations (namespace, function, submitted_at);
CREATE INDEX IF NOT EXISTS inv_open ON invocations (state) WHERE state IN ('QUEUED', 'RUNNING');
CREATE INDEX IF NOT EXISTS inv_finished ON invocations (finished_at);
"""

_LIST_COLUMNS = (
    "id, namespace, function, state, submitted_at, dispatched_at, started_at, finished_at, "
    "attempts, error_type, error_message, error_traceback, timings, usage, stdout, stderr, "
    "callback_url, callback, batch"
)


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


class Store:
    """The gateway's SQLite store at ``path`` (made with its folder if missing).

    ``retention_days``: finished invocations older than this are purged by :meth:`purge`
    (unfinished ones never are). ``synchronous``: ``"NORMAL"`` or ``"FULL"`` (see the module).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        retention_days: float = RETENTION_DAYS,
        synchronous: str = "NORMAL",
        inline_result_bytes: int = INLINE_RESULT_BYTES,
    ) -> None:
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise StoreError(f"synchronous must be NORMAL or FULL, got {synchronous!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.results_dir = self.path.parent / (self.path.name + ".results")
        self.retention_s = float(retention_days) * 86400.0
        self.inline_result_bytes = int(inline_result_bytes)
        self._synchronous = synchronous.upper()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._queue: collections.deque[Any] = collections.deque()
        self._commit_lock = threading.Lock()  # not reentrant: a hook's write is queued
        self._event = threading.Event()
        self._wconn: sqlite3.Connection | None = None
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        self._stop = False
        self._lock_fd: int | None = None
        self._closed = False
        conn = self._connect()
        try:
            conn.executescript(_SCHEMA)
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)",
                (str(SCHEMA_VERSION),),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store {self.path}: {exc}") from exc
        finally:
            conn.close()

    # ------------------------------------------------------------------ connections

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store {self.path}: {exc}") from exc
        conn.row_factory = sqlite3.Row
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def read(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        """Rows of a query, on this thread's own connection (readers never wait on writes)."""
        return self._reader().execute(sql, tuple(params)).fetchall()

    def lock_for_gateway(self) -> None:
        """Take the store for one gateway process; a second one fails with StoreError."""
        fd = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StoreError(
                f"another gateway serves the store {self.path}; one gateway per SQLite store"
            ) from None
        self._lock_fd = fd

    # ------------------------------------------------------------------ the writer

    def submit(
        self,
        op: Callable[[sqlite3.Connection], Any],
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

    def write(self, op: Callable[[sqlite3.Connection], Any]) -> Any:
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
        if self._wconn is None:
            self._wconn = self._connect()
        while self._queue:
            batch = []
            with contextlib.suppress(IndexError):
                while len(batch) < 1024:
                    batch.append(self._queue.popleft())
            self._run_batch(self._wconn, batch)

    def _write_loop(self) -> None:
        while True:
            self._event.wait()
            self._event.clear()
            with self._commit_lock:
                self._drain()
            if self._stop:
                return

    def _run_batch(self, conn: sqlite3.Connection, batch: list[Any]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op, _, _ in batch:
                conn.execute("SAVEPOINT op")
                try:
                    outcomes.append((True, op(conn)))
                    conn.execute("RELEASE op")
                except Exception as exc:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    outcomes.append((False, exc))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
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

    def close(self) -> None:
        """Stop the writer (after the writes queued before this) and close every connection."""
        if self._closed:
            return
        self._closed = True
        self._stop = True
        if self._writer is not None:
            self._event.set()
            self._writer.join(timeout=30)
        with self._commit_lock:
            self._drain()
            if self._wconn is not None:
                self._wconn.close()
                self._wconn = None
        with self._readers_lock:
            for conn in self._readers:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._readers.clear()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Store:
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

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR IGNORE INTO namespaces (name, created_at) VALUES (?, ?)",
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

        def op(conn: sqlite3.Connection) -> bool:
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
        ok = hmac.compare_digest(_hash(secret, row["salt"], row["iterations"]), row["hash"])
        if not ok or row["revoked_at"] is not None:
            return None
        return Principal(token_id, row["namespace"], row["rate_per_s"], row["max_body_bytes"])

    def token_revoked(self, token_id: str) -> bool:
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

        def op(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE functions SET import_path = ?, idempotent = ?, resources = ?,"
                " updated_at = ? WHERE namespace = ? AND name = ?",
                (rec.import_path, int(rec.idempotent), json.dumps(rec.resources),
                 rec.updated_at, rec.namespace, rec.name),
            )  # fmt: skip
            if cur.rowcount:
                return False
            conn.execute(
                "INSERT OR IGNORE INTO namespaces (name, created_at) VALUES (?, ?)",
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

    def invocation(self, invocation_id: str, namespace: str | None = None) -> dict[str, Any]:
        """One invocation's row as a dict (its result as JSON text, read from its file when
        large); raises KeyError when missing or in another namespace."""
        rows = self.read("SELECT * FROM invocations WHERE id = ?", (invocation_id,))
        if not rows or (namespace is not None and rows[0]["namespace"] != namespace):
            raise KeyError(invocation_id)
        row = dict(rows[0])
        if row["result_path"]:
            try:
                row["result"] = Path(row["result_path"]).read_text()
            except OSError as exc:
                msg = f"the result file of {invocation_id} is unreadable: {exc}"
                raise StoreError(msg) from exc
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
            if row["result_path"]:
                try:
                    row["result"] = Path(row["result_path"]).read_text()
                except OSError as exc:
                    msg = f"the result file of {row['id']} is unreadable: {exc}"
                    raise StoreError(msg) from exc
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
        """Write a large result beside the database; its path."""
        self.results_dir.mkdir(exist_ok=True)
        path = self.results_dir / f"{invocation_id}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        return str(path)

    def purge(self, now: float | None = None) -> int:
        """Delete invocations that ended more than the retention ago (and their result
        files); the number deleted. Unfinished invocations are never purged."""
        cutoff = (time.time() if now is None else now) - self.retention_s

        def op(conn: sqlite3.Connection) -> list[str | None]:
            rows = conn.execute(
                "SELECT result_path FROM invocations WHERE finished_at < ? AND state IN"
                " ('COMPLETED', 'FAILED', 'CANCELLED')",
                (cutoff,),
            ).fetchall()
            conn.execute(
                "DELETE FROM invocations WHERE finished_at < ? AND state IN"
                " ('COMPLETED', 'FAILED', 'CANCELLED')",
                (cutoff,),
            )
            return [r[0] for r in rows]

        paths = self.write(op)
        for p in paths:
            if p:
                with contextlib.suppress(OSError):
                    os.unlink(p)
        return len(paths)


_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def check_name(name: str, what: str) -> str:
    """A namespace or function name: 1-100 of letters, digits, ``_ . -``."""
    if not isinstance(name, str) or not 1 <= len(name) <= 100 or not set(name) <= _NAME_CHARS:
        raise BadInput(f"{what} must be 1-100 letters, digits, '_', '.' or '-', got {name!r}")
    return name


__all__ = [
    "FINAL",
    "RETENTION_DAYS",
    "STATES",
    "FunctionRecord",
    "Principal",
    "Store",
    "TokenInfo",
    "check_name",
    "iso",
    "new_invocation_id",
    "parse_time",
    "split_token",
]
