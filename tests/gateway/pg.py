"""A real PostgreSQL server for the tests: ``initdb`` in a temporary folder, ``postgres`` on a
free 127.0.0.1 port, stopped and removed after the session; :meth:`PgServer.database` makes a
fresh database (one per test).

As root (PostgreSQL refuses to run as root) the server runs as the ``postgres`` OS user;
otherwise as the current user. Tests skip, saying why, where no PostgreSQL binaries or no
psycopg are found. Import the fixture into a test module (``from tests.gateway.pg import
pg_server  # noqa: F401``) and take it with ``request.getfixturevalue("pg_server")``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from pathlib import Path

import pytest


def pg_bindir() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: ``$PG_BINDIR``, PATH, then Debian's
    ``/usr/lib/postgresql/<version>/bin`` (the newest)."""
    env = os.environ.get("PG_BINDIR")
    if env and (Path(env) / "initdb").exists():
        return Path(env)
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: [int(x) for x in Path(p).parts[-3].split(".") if x.isdigit()],
    )
    return Path(versions[-1]).parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """One ``postgres`` process; :meth:`database` makes a new empty database, its DSN."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.folder = Path(tempfile.mkdtemp(prefix="hetfaas-pg-"))
        self.data = self.folder / "data"
        self.port = _free_port()
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.folder, "postgres")
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync",
            "-E", "UTF8", "--locale=C",
        )  # fmt: skip
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c full_page_writes=off -c max_connections=200"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "log"), "-w",
                  "-t", "60", "-o", options, "start")  # fmt: skip
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bindir / tool), *args]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode != 0:
            log = self.folder / "log"
            raise RuntimeError(
                f"{tool} failed ({proc.returncode}): {proc.stdout}{proc.stderr}"
                + (log.read_text() if log.exists() else "")
            )

    def database(self) -> str:
        """A new, empty database; its DSN."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)


class _Shared:
    """The session's one server, however many modules import the fixture."""

    lock = threading.Lock()
    server: PgServer | None = None
    users = 0


def _acquire() -> PgServer:
    pytest.importorskip("psycopg", reason="the PostgreSQL store needs psycopg")
    bindir = pg_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl): install postgresql")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root, and no runuser to start PostgreSQL as postgres")
    with _Shared.lock:
        if _Shared.server is None:
            _Shared.server = PgServer(bindir)
        _Shared.users += 1
        return _Shared.server


def _release() -> None:
    with _Shared.lock:
        _Shared.users -= 1
        if _Shared.users == 0 and _Shared.server is not None:
            _Shared.server.stop()
            _Shared.server = None


@pytest.fixture(scope="session")
def pg_server():
    """The session's PostgreSQL server (one, shared by every module that imports this)."""
    server = _acquire()
    yield server
    _release()
