"""The gateway's store on PostgreSQL (psycopg 3), shared by several gateways.

The same tables, queries and batching writer as the SQLite store (:mod:`.store_base`), with
PostgreSQL's types (``DOUBLE PRECISION``, ``BYTEA``) and SQLite's few functions PostgreSQL
lacks (two-argument ``min``/``max``, ``ifnull``, ``sum`` of booleans), made in the database
so that a query written once runs on both. Operations keep sqlite3's interface
through :class:`PgConnection` (``?`` placeholders, ``execute(...).fetchone()``, rows indexed
by position and by name), so the engine's SQL runs on both unchanged. Large results and binary
inputs go to ``results_dir``, which every gateway of the store must see (a shared file system).

**Several gateways.** Each gateway has an id (``gateway_id``; ``hetfaas serve`` uses
``HOST:PORT``) and a lease, a row of ``gateways`` whose ``expires_at`` it pushes ``lease_s``
ahead every ``heartbeat_s`` (times on the database's clock, so the machines' clocks do not
matter). An id is held by one live process at a time (a session advisory lock). Every
invocation carries its ``owner``, the gateway that accepted it or took it over:

- a gateway starting takes back (:meth:`PgStore.take_orphans`) the unfinished calls of its own
  id from before, of gateways whose lease expired, and of none; never a live gateway's;
- while it runs, its heartbeat looks for calls left by a peer whose lease expired, and the
  engine takes them the same way. The claim is one ``UPDATE ... RETURNING`` over rows picked
  ``FOR UPDATE SKIP LOCKED``, and the dead lease is deleted ``FOR UPDATE SKIP LOCKED`` in the
  same transaction, so two gateways never take the same call;
- a lease is renewed only while it has not expired: a gateway that stalled past its lease
  learns it lost it (``on_lost``) and must stop handing calls over, since a peer may rerun
  them; closing the store gives the lease up, so peers take what is left at once.

psycopg is imported when a :class:`PgStore` is made (``pip install 'hetfaas[postgres]'``).
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from .errors import StoreError
from .store_base import (
    INLINE_RESULT_BYTES,
    RECOVER_COLUMNS,
    RETENTION_DAYS,
    SCHEMA_VERSION,
    BaseStore,
    _log,
    schema,
)

LEASE_S = 15.0
_LOCK_KEY = 0x68666173  # the advisory locks' first key ("hfas"); the second: the id's hash
_NOW = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"
_PG_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS gateways (id TEXT PRIMARY KEY, host TEXT NOT NULL,"
    " pid INTEGER NOT NULL, started_at DOUBLE PRECISION NOT NULL,"
    " heartbeat_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION NOT NULL,"
    " lease_s DOUBLE PRECISION NOT NULL)",
    "CREATE INDEX IF NOT EXISTS inv_open_owner ON invocations (owner)"
    " WHERE state IN ('QUEUED', 'RUNNING')",
]
_SQLITE_FUNCTIONS = {  # SQLite's functions that PostgreSQL lacks, so that queries run on both
    "min(anycompatible, anycompatible)": "CREATE FUNCTION min(anycompatible, anycompatible)"
    " RETURNS anycompatible LANGUAGE sql IMMUTABLE AS 'SELECT LEAST($1, $2)'",
    "max(anycompatible, anycompatible)": "CREATE FUNCTION max(anycompatible, anycompatible)"
    " RETURNS anycompatible LANGUAGE sql IMMUTABLE AS 'SELECT GREATEST($1, $2)'",
    "ifnull(anycompatible, anycompatible)": "CREATE FUNCTION ifnull(anycompatible,"
    " anycompatible) RETURNS anycompatible LANGUAGE sql IMMUTABLE AS 'SELECT COALESCE($1, $2)'",
    "hetfaas_add_bool(bigint, boolean)": "CREATE FUNCTION hetfaas_add_bool(bigint, boolean)"
    " RETURNS bigint LANGUAGE sql IMMUTABLE"
    " AS 'SELECT CASE WHEN $2 IS NULL THEN $1 ELSE COALESCE($1, 0) + $2::int END'",
    "sum(boolean)": "CREATE AGGREGATE sum(boolean) (SFUNC = hetfaas_add_bool, STYPE = bigint)",
}
_REGISTER = (
    "INSERT INTO gateways (id, host, pid, started_at, heartbeat_at, expires_at, lease_s)"
    f" VALUES (?, ?, ?, {_NOW}, {_NOW}, {_NOW} + ?, ?) ON CONFLICT (id) DO UPDATE SET"
    " host = excluded.host, pid = excluded.pid, started_at = excluded.started_at,"
    " heartbeat_at = excluded.heartbeat_at, expires_at = excluded.expires_at,"
    " lease_s = excluded.lease_s"
)
_RENEW = (
    f"UPDATE gateways SET heartbeat_at = {_NOW}, expires_at = {_NOW} + lease_s"
    f" WHERE id = ? AND expires_at >= {_NOW}"
)
_ORPHANED = (  # an unfinished call whose owner holds no live lease
    "state IN ('QUEUED', 'RUNNING') AND (owner IS NULL OR NOT EXISTS (SELECT 1 FROM gateways g"
    " WHERE g.id = i.owner{live}))"
)
_ANY_ORPHAN = "SELECT 1 FROM invocations i WHERE {} LIMIT 1".format(
    _ORPHANED.format(live=f" AND g.expires_at >= {_NOW}")
)
_BURY = (  # dead leases: deleted, locked till the claim commits (their renewal then fails)
    f"DELETE FROM gateways WHERE id IN (SELECT id FROM gateways WHERE expires_at < {_NOW}"
    " AND id <> ? FOR UPDATE SKIP LOCKED) RETURNING id"
)
_CLAIM = (
    "UPDATE invocations SET owner = ? WHERE id IN (SELECT id FROM invocations i WHERE {where}"
    f" FOR UPDATE SKIP LOCKED) RETURNING {RECOVER_COLUMNS}"
)


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise StoreError(
            "a PostgreSQL store needs psycopg 3: pip install 'hetfaas[postgres]'"
        ) from None
    return psycopg


def is_dsn(location: str | os.PathLike[str]) -> bool:
    """Whether a ``--store`` argument names a PostgreSQL database (``postgresql://...``)."""
    return str(location).startswith(("postgresql://", "postgres://"))


def redact(dsn: str) -> str:
    """The DSN without its password (for messages)."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", re.sub(r"(password=)\S+", r"\1***", dsn))


# ---------------------------------------------------------------------- the dialect

_TOKENS = re.compile(r"'[^']*(?:''[^']*)*'|\"[^\"]*(?:\"\"[^\"]*)*\"|--[^\n]*|/\*.*?\*/|\?|%", re.S)
_translated: dict[str, str] = {}


def _sub(m: re.Match[str]) -> str:
    t = m.group()
    return "%s" if t == "?" else t.replace("%", "%%")


def to_pg(sql: str) -> str:
    """sqlite3's placeholders (``?``) as psycopg's (``%s``), other ``%`` doubled; literals,
    quoted names and comments are left as they are."""
    out = _translated.get(sql)
    if out is None:
        out = _TOKENS.sub(_sub, sql)
        if len(_translated) > 4096:
            _translated.clear()
        _translated[sql] = out
    return out


class Row(tuple):  # type: ignore[type-arg]
    """A row as sqlite3.Row: a tuple, also indexed by column name (case-insensitive),
    with ``keys()`` (so ``dict(row)`` works)."""

    __slots__ = ()
    _index: ClassVar[dict[str, int]] = {}
    _names: ClassVar[tuple[str, ...]] = ()

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            i = self._index.get(key)
            if i is None:
                i = self._index.get(key.lower())
                if i is None:
                    raise IndexError(f"no column named {key!r}")
            key = i
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


_row_classes: dict[tuple[str, ...], type[Row]] = {}


def _row_factory(cursor: Any) -> Callable[[Sequence[Any]], Any]:
    desc = cursor.description
    if desc is None:
        return tuple
    names = tuple(c.name for c in desc)
    cls = _row_classes.get(names)
    if cls is None:
        index: dict[str, int] = {}
        for i, name in enumerate(names):
            index.setdefault(name, i)
            index.setdefault(name.lower(), i)
        cls = type("Row", (Row,), {"__slots__": (), "_index": index, "_names": names})
        if len(_row_classes) > 1024:
            _row_classes.clear()
        _row_classes[names] = cls
    return cls


_numeric_loader: Any = None


def _numeric_loader_class() -> Any:
    """numeric (what SUM, AVG and EXTRACT give) as int or float, as SQLite gives them."""
    global _numeric_loader
    if _numeric_loader is None:
        from psycopg.adapt import Loader

        class NumericLoader(Loader):
            def load(self, data: Any) -> Any:
                text = bytes(data)
                if text.lstrip(b"-").isdigit():
                    return int(text)
                return float(text)

        _numeric_loader = NumericLoader
    return _numeric_loader


class PgCursor:
    """What :meth:`PgConnection.execute` gives: sqlite3's cursor's reading methods."""

    __slots__ = ("_cur",)

    def __init__(self, cur: Any) -> None:
        self._cur = cur

    @property
    def rowcount(self) -> int:
        return int(self._cur.rowcount)

    @property
    def description(self) -> Any:
        return self._cur.description

    def fetchone(self) -> Any:
        return self._cur.fetchone() if self._cur.description is not None else None

    def fetchall(self) -> list[Any]:
        return self._cur.fetchall() if self._cur.description is not None else []

    def __iter__(self) -> Any:
        return iter(self.fetchall())


class PgConnection:
    """A psycopg connection (autocommit: transactions are the store's explicit ``BEGIN``)
    that speaks as a sqlite3 one: ``?`` placeholders, rows indexed by position and name."""

    __slots__ = ("raw",)

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Iterable[Any] = ()) -> PgCursor:
        params = tuple(params)
        if not params:  # not parsed for placeholders: several statements may go at once
            return PgCursor(self.raw.execute(sql))
        return PgCursor(self.raw.execute(to_pg(sql), params))

    def executemany(self, sql: str, seq: Iterable[Iterable[Any]]) -> PgCursor:
        cur = self.raw.cursor()
        cur.executemany(to_pg(sql), [tuple(p) for p in seq])
        return PgCursor(cur)

    @property
    def broken(self) -> bool:
        return bool(self.raw.closed or self.raw.broken)

    def close(self) -> None:
        self.raw.close()


# ---------------------------------------------------------------------- the store


class PgStore(BaseStore):
    """The gateway's store in the PostgreSQL database of ``dsn`` (tables made if missing).

    ``results_dir``: where large results and binary inputs go, seen by every gateway of the
    store (None only for a tool that never writes one, such as ``hetfaas token``).
    ``gateway_id``: this gateway's id (default: host, pid and a random part); a gateway
    restarted with the same id takes back its calls at once, else they wait for the old
    lease (``lease_s``) to expire. ``heartbeat_s``: how often the lease is renewed and peers
    are checked (default ``lease_s / 5``). ``pool_size``: reader connections at most.
    """

    dialect = "postgresql"
    _JOIN_STATEMENTS = True

    def __init__(
        self,
        dsn: str,
        *,
        results_dir: str | os.PathLike[str] | None,
        retention_days: float = RETENTION_DAYS,
        inline_result_bytes: int = INLINE_RESULT_BYTES,
        gateway_id: str | None = None,
        lease_s: float = LEASE_S,
        heartbeat_s: float | None = None,
        pool_size: int = 8,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self._pg = _psycopg()
        if not lease_s > 0:
            raise StoreError(f"lease_s must be > 0, got {lease_s}")
        self.dsn = dsn
        self.location = redact(dsn)
        self.results_dir = Path(results_dir) if results_dir is not None else None
        self.retention_s = float(retention_days) * 86400.0
        self.inline_result_bytes = int(inline_result_bytes)
        self.owner_id = gateway_id or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.lease_s = float(lease_s)
        self.heartbeat_s = float(heartbeat_s) if heartbeat_s else self.lease_s / 5
        self.pool_size = max(1, int(pool_size))
        self.lease_lost = False
        self._connect_timeout_s = connect_timeout_s
        self._db_errors = (self._pg.Error,)
        self._idle: queue.LifoQueue[PgConnection] = queue.LifoQueue()
        self._pool_lock = threading.Lock()
        self._pool_n = 0
        self._lease_lock = threading.Lock()
        self._lease_conn: PgConnection | None = None
        self._registered = False
        self._id_locked = False
        self._took_own = False
        self._lease_stop = threading.Event()
        self._lease_thread: threading.Thread | None = None
        self._callbacks: dict[str, Callable[[], None] | None] = {}
        self._init_writer()
        conn = self._connect()
        try:
            conn.execute("BEGIN")
            conn.execute("SELECT pg_advisory_xact_lock(?, 0)", (_LOCK_KEY,))  # one creator
            for statement in [*schema("DOUBLE PRECISION", "BYTEA"), *_PG_SCHEMA]:
                conn.execute(statement)
            for signature, statement in _SQLITE_FUNCTIONS.items():
                if conn.execute("SELECT to_regprocedure(?)", (signature,)).fetchone()[0] is None:
                    conn.execute(statement)
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )
            conn.execute("COMMIT")
        except self._pg.Error as exc:
            raise StoreError(f"cannot open the store {self.location}: {exc}") from exc
        finally:
            conn.close()

    def __repr__(self) -> str:
        return f"PgStore({self.location!r}, gateway_id={self.owner_id!r})"

    # ------------------------------------------------------------------ connections

    def _connect(self) -> PgConnection:
        try:
            raw = self._pg.connect(
                self.dsn,
                autocommit=True,
                row_factory=_row_factory,
                connect_timeout=max(1, int(self._connect_timeout_s)),
                application_name=f"hetfaas gateway {self.owner_id}"[:63],
            )
        except self._pg.Error as exc:
            raise StoreError(f"cannot open the store {self.location}: {exc}") from exc
        raw.adapters.register_loader("numeric", _numeric_loader_class())
        return PgConnection(raw)

    def _broken(self, conn: Any) -> bool:
        return bool(conn.broken)

    def _borrow(self) -> PgConnection:
        with contextlib.suppress(queue.Empty):
            return self._idle.get_nowait()
        with self._pool_lock:
            make = self._pool_n < self.pool_size
            if make:
                self._pool_n += 1
        if make:
            try:
                return self._connect()
            except BaseException:
                with self._pool_lock:
                    self._pool_n -= 1
                raise
        try:
            return self._idle.get(timeout=30)
        except queue.Empty:
            raise StoreError(
                f"no free connection to the store for 30 s ({self.pool_size})"
            ) from None

    def _give_back(self, conn: PgConnection) -> None:
        if self._closed or conn.broken:
            with contextlib.suppress(Exception):
                conn.close()
            with self._pool_lock:
                self._pool_n -= 1
            return
        self._idle.put(conn)

    def read(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        """Rows of a query (``?`` placeholders) on a pooled connection, outside any
        transaction of the writer (readers never wait on writes)."""
        if self._closed:
            raise StoreError("the store is closed")
        params = tuple(params)
        for attempt in (1, 2):
            conn = self._borrow()
            try:
                return conn.execute(sql, params).fetchall()
            except self._pg.OperationalError as exc:
                if attempt == 2 or not conn.broken:
                    raise StoreError(f"the store cannot be read: {exc}") from exc
                self._discard_idle()  # the server went away: the others are stale too
            finally:
                self._give_back(conn)
        raise AssertionError("unreachable")

    def _discard_idle(self) -> None:
        while True:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                return
            with contextlib.suppress(Exception):
                conn.close()
            with self._pool_lock:
                self._pool_n -= 1

    # ------------------------------------------------------------------ the lease

    def lock_for_gateway(self) -> None:
        """Register this gateway's lease (several gateways share the store; a second live
        process with the same ``gateway_id`` fails with StoreError)."""
        self._register()

    def _lease_connection(self) -> PgConnection:
        """The lease's own connection (made again if lost), holding the id's advisory lock."""
        conn = self._lease_conn
        if conn is not None and not conn.broken:
            return conn
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
            self._lease_conn = None
        conn = self._connect()
        self._id_locked = self._lock_id(conn)
        if not self._id_locked and not self._registered:
            conn.close()
            raise _IdInUse()
        self._lease_conn = conn
        return conn

    def _lock_id(self, conn: PgConnection) -> bool:
        """Take the session lock of this gateway's id (at most one live process per id)."""
        got = conn.execute(
            "SELECT pg_try_advisory_lock(?, hashtext(?))", (_LOCK_KEY, self.owner_id)
        ).fetchone()[0]
        if not got and self._registered:  # after a reconnect: our old session lingers?
            _log.warning(
                "hetfaas gateway: the id %r is locked by another session of %s",
                self.owner_id,
                self.location,
            )
        return bool(got)

    def _register(self) -> None:
        with self._lease_lock:
            if self._registered:
                return
            if self._closed:
                raise StoreError("the store is closed")
            end = time.monotonic() + self.lease_s  # a dead session of ours may linger a while
            while True:
                try:
                    conn = self._lease_connection()
                    break
                except _IdInUse:
                    if time.monotonic() > end:
                        raise StoreError(
                            f"gateway id {self.owner_id!r} is in use by a live gateway of "
                            f"{self.location}; give each gateway its own id"
                        ) from None
                    time.sleep(0.1)
            try:
                conn.execute(
                    _REGISTER,
                    (self.owner_id, socket.gethostname(), os.getpid(), self.lease_s, self.lease_s),
                )
            except self._pg.Error as exc:
                raise StoreError(f"cannot register the gateway's lease: {exc}") from exc
            self._registered = True
            self._lease_thread = threading.Thread(
                target=self._lease_loop, name="hetfaas-lease", daemon=True
            )
            self._lease_thread.start()

    def _renew(self) -> bool:
        with self._lease_lock:
            conn = self._lease_connection()
            if not self._id_locked:
                self._id_locked = self._lock_id(conn)
            return conn.execute(_RENEW, (self.owner_id,)).rowcount == 1

    def has_orphans(self) -> bool:
        """Whether some unfinished call's owner holds no live lease."""
        with self._lease_lock:
            return bool(self._lease_connection().execute(_ANY_ORPHAN).fetchall())

    def _callback(self, name: str) -> None:
        fn = self._callbacks.get(name)
        if fn is not None:
            try:
                fn()
            except Exception:
                _log.exception("hetfaas gateway: the lease's %s hook failed", name)

    def _lease_loop(self) -> None:
        while not self._lease_stop.wait(self.heartbeat_s):
            try:
                alive = self._renew()
            except Exception as exc:  # the server is away: the lease may still hold
                _log.warning(
                    "hetfaas gateway: cannot renew the lease of %s: %s", self.owner_id, exc
                )
                continue
            if not alive:
                self.lease_lost = True
                _log.error(
                    "hetfaas gateway: the lease of gateway %r expired; its calls may be run by "
                    "another gateway now: it hands no more calls over (restart it)",
                    self.owner_id,
                )
                self._callback("on_lost")
                return
            self._callback("on_tick")
            if self._callbacks.get("on_orphans") is None:
                continue
            try:
                found = self.has_orphans()
            except Exception as exc:
                _log.warning("hetfaas gateway: cannot look for orphaned calls: %s", exc)
                continue
            if found:
                self._callback("on_orphans")

    def watch_peers(
        self,
        on_tick: Callable[[], None] | None = None,
        on_orphans: Callable[[], None] | None = None,
        on_lost: Callable[[], None] | None = None,
    ) -> bool:
        """Keep this gateway's lease (registered if it is not yet) and call, from the lease's
        thread, ``on_tick`` at each heartbeat, ``on_orphans`` when some unfinished call's
        owner has no live lease, ``on_lost`` once if this gateway's own lease expired."""
        self._callbacks = {"on_tick": on_tick, "on_orphans": on_orphans, "on_lost": on_lost}
        self._register()
        return True

    def take_orphans(self, conn: Any) -> Sequence[Any]:
        """In a write operation: claim for this gateway the unfinished calls of dead
        gateways (lease expired, or gone), of none, and, the first time, of this gateway's
        own id from before; their rows, in submission order. A live peer's calls are never
        taken, and a call another gateway is claiming at that moment is skipped."""
        self._register()
        conn.execute(_BURY, (self.owner_id,))
        where = _ORPHANED.format(live="")
        params: tuple[Any, ...] = (self.owner_id,)
        if not self._took_own:
            where = f"({where} OR (state IN ('QUEUED', 'RUNNING') AND owner = ?))"
            params += (self.owner_id,)
        rows = conn.execute(_CLAIM.format(where=where), params).fetchall()
        self._took_own = True
        return sorted(rows, key=lambda r: (r["submitted_at"], r["id"]))

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """Stop the lease's thread and the writer (after the writes queued before this),
        give the lease up (peers take what calls are left) and close every connection."""
        if self._closed:
            return
        self._lease_stop.set()
        if self._lease_thread is not None:
            self._lease_thread.join(timeout=30)
        super().close()
        with self._lease_lock:
            conn = self._lease_conn
            if conn is not None:
                if self._registered and not self.lease_lost:
                    with contextlib.suppress(self._pg.Error):
                        conn.execute("DELETE FROM gateways WHERE id = ?", (self.owner_id,))
                with contextlib.suppress(Exception):
                    conn.close()
                self._lease_conn = None
        self._discard_idle()

    def __enter__(self) -> PgStore:
        return self


class _IdInUse(Exception):
    pass


__all__ = ["LEASE_S", "PgConnection", "PgStore", "Row", "is_dsn", "redact", "to_pg"]
