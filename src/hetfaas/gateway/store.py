"""The gateway's durable store: SQLite in WAL mode, one commit at a time, readers per thread.

Tables: ``namespaces``, ``tokens`` (hashed: PBKDF2-HMAC-SHA256 with a salt per token),
``functions`` (deployed by import path) and ``invocations`` (every call the gateway accepted,
its state, times, attempts, input, result or the path of a large result, error, timings,
usage and logs). What this store shares with the PostgreSQL one (the schema, the batching
writer, tokens, functions, queries, the purge) is :class:`~.store_base.BaseStore`.

Writes are serialised by one commit lock (:meth:`Store.submit`): each operation is a function
of the connection, run in a savepoint of a transaction shared with every other operation
waiting at that moment (group commit), so a burst of calls costs one commit, not one each.
The operation's ``after`` hook runs once the commit is done: whatever it does (hand a call to
an executor, answer a request) happens only after the transition is durable. The gateway's
state machine (:mod:`hetfaas.gateway.engine`) lives in those operations and hooks, under that
lock, so it needs no lock of its own.

``synchronous=NORMAL`` (the default) keeps every committed transaction through a crash of the
process (``kill -9``); ``"FULL"`` keeps them through a power loss too, at an fsync per commit.

The store is also used without a gateway (``hetfaas token ...``): SQLite's busy timeout lets
that process write while a gateway runs. Only one gateway may serve a SQLite store at a time
(:meth:`Store.lock_for_gateway`); several gateways share a PostgreSQL store
(:class:`hetfaas.gateway.store_pg.PgStore`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import StoreError
from .store_base import (
    FINAL,
    INLINE_RESULT_BYTES,
    LOG_BYTES,
    RETENTION_DAYS,
    SCHEMA_VERSION,
    STATES,
    TOKEN_ITERATIONS,
    TOKEN_PREFIX,
    BaseStore,
    FunctionRecord,
    Principal,
    TokenInfo,
    check_name,
    iso,
    new_invocation_id,
    parse_time,
    schema,
    split_token,
)


class Store(BaseStore):
    """The gateway's SQLite store at ``path`` (made with its folder if missing).

    ``retention_days``: finished invocations older than this are purged by :meth:`purge`
    (unfinished ones never are). ``synchronous``: ``"NORMAL"`` or ``"FULL"`` (see the module).
    ``results_dir``: where large results and binary inputs go (default: ``<path>.results``
    beside the database).
    """

    dialect = "sqlite"
    _db_errors = (sqlite3.Error,)
    _BEGIN = "BEGIN IMMEDIATE"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        retention_days: float = RETENTION_DAYS,
        synchronous: str = "NORMAL",
        inline_result_bytes: int = INLINE_RESULT_BYTES,
        results_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise StoreError(f"synchronous must be NORMAL or FULL, got {synchronous!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.results_dir = (
            Path(results_dir)
            if results_dir is not None
            else self.path.parent / (self.path.name + ".results")
        )
        self.retention_s = float(retention_days) * 86400.0
        self.inline_result_bytes = int(inline_result_bytes)
        self._synchronous = synchronous.upper()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._lock_fd: int | None = None
        self._init_writer()
        conn = self._connect()
        try:
            conn.executescript(";\n".join(schema("REAL", "BLOB")) + ";")
            columns = {r[1] for r in conn.execute("PRAGMA table_info(invocations)")}
            if "owner" not in columns:  # a store of schema 1
                with contextlib.suppress(sqlite3.OperationalError):  # another process did
                    conn.execute("ALTER TABLE invocations ADD COLUMN owner TEXT")
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
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

    def close(self) -> None:
        """Stop the writer (after the writes queued before this) and close every connection."""
        if self._closed:
            return
        super().close()
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


__all__ = [
    "FINAL",
    "INLINE_RESULT_BYTES",
    "LOG_BYTES",
    "RETENTION_DAYS",
    "STATES",
    "TOKEN_ITERATIONS",
    "TOKEN_PREFIX",
    "BaseStore",
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
