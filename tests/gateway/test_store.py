"""The store without HTTP: WAL, tokens hashed, group commit, filters, retention, one gateway.

The store's contract runs on both backends: SQLite, and PostgreSQL on a real server the tests
start (:mod:`tests.gateway.pg`; skipped where none is installed)."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from hetfaas.exceptions import HetfaasError
from hetfaas.gateway.errors import BadInput, StoreError
from hetfaas.gateway.store import Store, iso, parse_time, split_token
from tests.gateway.pg import pg_server  # noqa: F401  (the session's PostgreSQL server)


@pytest.fixture(params=["sqlite", "postgresql"])
def make_store(request, tmp_path):
    """Stores of one backend, on one database (closed after the test)."""
    made = []
    dsn = request.getfixturevalue("pg_server").database() if request.param != "sqlite" else None

    def make(**kw):
        if dsn is None:
            s = Store(tmp_path / "s.db", **kw)
        else:
            from hetfaas.gateway.store_pg import PgStore

            s = PgStore(dsn, results_dir=tmp_path / "results", **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


@pytest.fixture
def store(make_store):
    return make_store(retention_days=14)


def _other_connection(store):
    """A connection of another client of the store's database (not the store's own)."""
    if store.dialect == "sqlite":
        return sqlite3.connect(store.path)
    import psycopg

    return psycopg.connect(store.dsn)


def _insert(store, id, ns="a", fn="f", state="QUEUED", submitted=None, finished=None, **extra):
    cols = {"id": id, "namespace": ns, "function": fn, "state": state, "input": "{}",
            "submitted_at": submitted or time.time(), "finished_at": finished, **extra}  # fmt: skip
    names = ", ".join(cols)
    marks = ", ".join("?" for _ in cols)
    store.write(
        lambda c: c.execute(
            f"INSERT INTO invocations ({names}) VALUES ({marks})", tuple(cols.values())
        )
    )


def test_wal_mode_and_the_schema_survive_a_reopen(make_store):
    with make_store() as s:
        _insert(s, "x1")
    if s.dialect == "sqlite":
        raw = sqlite3.connect(s.path)
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        raw.close()
    with make_store() as s:
        assert s.invocation("x1")["state"] == "QUEUED"
        assert s.read("SELECT value FROM meta WHERE key = 'schema'")[0][0] == "2"


def test_a_sqlite_store_of_schema_1_gains_the_owner_column(tmp_path):
    raw = sqlite3.connect(tmp_path / "old.db")
    raw.execute("CREATE TABLE invocations (id TEXT PRIMARY KEY, namespace TEXT NOT NULL,"
                " function TEXT NOT NULL, state TEXT NOT NULL, submitted_at REAL NOT NULL,"
                " finished_at REAL, input TEXT NOT NULL, result_path TEXT,"
                " batch TEXT)")  # fmt: skip
    raw.execute("INSERT INTO invocations VALUES ('old', 'a', 'f', 'QUEUED', 1, NULL, '{}',"
                " NULL, NULL)")  # fmt: skip
    raw.commit()
    raw.close()
    with Store(tmp_path / "old.db") as s:
        assert s.read("SELECT id, owner FROM invocations")[0][:] == ("old", None)
        assert s.owner_id is None and s.watch_peers() is False


def test_tokens_are_stored_hashed_with_their_own_salt_and_verified(store):
    info, token = store.create_token("alice", label="ci")
    _, token2 = store.create_token("alice")
    token_id, secret = split_token(token)
    assert token_id == info.id
    rows = store.read("SELECT * FROM tokens")
    assert len(rows) == 2 and rows[0]["salt"] != rows[1]["salt"]
    for row in rows:
        assert secret.encode() not in row["hash"] and secret not in repr(tuple(row))
    p = store.verify_token(token)
    assert p is not None and p.namespace == "alice" and p.token_id == info.id
    assert store.verify_token(token2).namespace == "alice"
    assert store.verify_token(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert store.verify_token(f"hft_{'0' * 12}_{secret}") is None  # unknown id
    assert store.verify_token("Bearer nonsense") is None
    assert [t.label for t in store.list_tokens("alice")] == ["ci", None]


def test_a_revoked_token_no_longer_verifies(store):
    info, token = store.create_token("bob", rate_per_s=5, max_body_bytes=1000)
    p = store.verify_token(token)
    assert (p.rate_per_s, p.max_body_bytes) == (5, 1000)
    assert store.revoke_token(info.id) is True
    assert store.revoke_token(info.id) is False  # once
    assert store.verify_token(token) is None
    assert store.token_revoked(info.id)
    assert store.list_tokens()[0].revoked_at is not None


def test_bad_namespace_names_and_limits_are_refused(store):
    for bad in ("", "a b", "x" * 101, "ns/../x"):
        with pytest.raises(BadInput):
            store.create_token(bad)
    with pytest.raises(BadInput):
        store.create_token("ok", rate_per_s=0)
    from hetfaas.gateway import errors

    for name in errors.__all__:
        if name != "RESTART_REASON":
            assert issubclass(getattr(errors, name), HetfaasError), name


def test_writes_from_many_threads_commit_together_and_a_failing_op_rolls_back_alone(store):
    batches = []
    orig = store._run_batch
    store._run_batch = lambda conn, batch: (batches.append(len(batch)), orig(conn, batch))[1]

    def worker(k):
        for j in range(50):
            _insert(store, f"t{k}-{j}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.read("SELECT COUNT(*) FROM invocations")[0][0] == 400
    assert len(batches) < 400  # at least some commits carried several writes

    def bad(conn):
        conn.execute("INSERT INTO invocations (id, namespace, function, state, input,"
                     " submitted_at) VALUES ('half', 'a', 'f', 'QUEUED', '{}', 1)")  # fmt: skip
        raise RuntimeError("boom")

    futs = [store.submit(bad), store.submit(lambda c: _ok(c))]
    with pytest.raises(RuntimeError):
        futs[0].result()
    assert futs[1].result() == "ok"
    assert store.read("SELECT COUNT(*) FROM invocations WHERE id = 'half'")[0][0] == 0
    assert store.read("SELECT COUNT(*) FROM invocations WHERE id = 'good'")[0][0] == 1


def _ok(conn):
    conn.execute("INSERT INTO invocations (id, namespace, function, state, input,"
                 " submitted_at) VALUES ('good', 'a', 'f', 'QUEUED', '{}', 1)")  # fmt: skip
    return "ok"


def test_the_after_hook_runs_once_the_write_is_visible_to_other_connections(store):
    seen = []

    def op(conn):
        conn.execute("INSERT INTO invocations (id, namespace, function, state, input,"
                     " submitted_at) VALUES ('h', 'a', 'f', 'QUEUED', '{}', 1)")  # fmt: skip
        return "h"

    def after(value):
        other = _other_connection(store)
        mark = "?" if store.dialect == "sqlite" else "%s"
        seen.append(
            other.execute(f"SELECT id FROM invocations WHERE id = {mark}", (value,)).fetchall()
        )
        other.close()

    store.submit(op, after).result()
    assert seen == [[("h",)]]


def test_the_invocation_list_filters_and_keeps_namespaces_apart(store):
    t0 = 1_700_000_000.0
    for i in range(6):
        state = "COMPLETED" if i < 4 else "QUEUED"
        _insert(store, f"i{i}", ns="a", fn="f" if i % 2 else "g", state=state, submitted=t0 + i)
    _insert(store, "other", ns="b", submitted=t0 + 10)
    ids = lambda rows: [r["id"] for r in rows]  # noqa: E731
    assert ids(store.invocations("a")) == ["i5", "i4", "i3", "i2", "i1", "i0"]
    assert ids(store.invocations("a", function="f")) == ["i5", "i3", "i1"]
    assert ids(store.invocations("a", state="QUEUED")) == ["i5", "i4"]
    assert ids(store.invocations("a", since=t0 + 2, until=t0 + 4)) == ["i3", "i2"]
    assert ids(store.invocations("a", limit=2)) == ["i5", "i4"]
    assert ids(store.invocations("b")) == ["other"]
    assert "input" not in store.invocations("a")[0] and "result" not in store.invocations("a")[0]
    with pytest.raises(KeyError):
        store.invocation("other", namespace="a")


def test_retention_purges_old_finished_invocations_and_their_files_only(store):
    now = time.time()
    old = now - 15 * 86400
    path = store.result_file("old-big", '"xxx"')
    _insert(store, "old-big", state="COMPLETED", submitted=old, finished=old, result_path=path)
    _insert(store, "old-failed", state="FAILED", submitted=old, finished=old)
    _insert(store, "old-queued", state="QUEUED", submitted=old)
    _insert(store, "recent", state="COMPLETED", submitted=now, finished=now)
    assert store.invocation("old-big")["result"] == '"xxx"'
    assert store.purge() == 2
    left = {r[0] for r in store.read("SELECT id FROM invocations")}
    assert left == {"old-queued", "recent"}
    assert not (store.results_dir / "old-big.json").exists()


def test_one_gateway_per_store(tmp_path):
    a, b = Store(tmp_path / "s.db"), Store(tmp_path / "s.db")
    a.lock_for_gateway()
    with pytest.raises(StoreError, match="another gateway"):
        b.lock_for_gateway()
    a.close()
    b.lock_for_gateway()  # released with the first
    b.close()


def test_times_parse_as_unix_seconds_or_iso():
    assert parse_time("1700000000.5") == 1700000000.5
    assert parse_time("2023-11-14T22:13:20Z") == 1700000000.0
    assert parse_time(iso(1700000000.25)) == 1700000000.25
    assert parse_time(None) is None
    with pytest.raises(BadInput):
        parse_time("yesterday")
