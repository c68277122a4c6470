"""Running the gateway's app on uvicorn: in the foreground (``hetfaas serve``), or in a
thread on a free port of 127.0.0.1 (tests, benchmarks)."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response


def bind(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening socket (``port=0``: a free one), as uvicorn binds it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def config(app: Any, host: str, port: int, log_level: str = "warning") -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=15,
        backlog=2048,
    )


def serve(app: Any, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve ``app`` until SIGINT/SIGTERM (uvicorn's own handling)."""
    uvicorn.Server(config(app, host, port, log_level)).run()


def echo_app() -> FastAPI:
    """A bare FastAPI app whose ``POST /echo`` answers the JSON body it got, and whose
    ``POST /drain`` reads a body of any size as it streams in and answers its length: the
    framework's floors, beside the gateway in ``hetfaas bench gateway``."""
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> Response:
        body = json.loads(await request.body())
        return Response(json.dumps(body), media_type="application/json")

    @app.post("/drain")
    async def drain(request: Request) -> Response:
        n = 0
        async for chunk in request.stream():
            n += len(chunk)
        return Response(json.dumps(n), media_type="application/json")

    return app


class BackgroundServer:
    """``app`` served by uvicorn in a thread of this process::

    with BackgroundServer(app) as url:
        httpx.get(url + "/healthz")
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sock = bind(host, port)
        self.host, self.port = self.sock.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"
        self.server = uvicorn.Server(config(app, self.host, self.port))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
            name="hetfaas-gateway",
        )  # fmt: skip

    def start(self, timeout: float = 30.0) -> str:
        self.thread.start()
        end = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the gateway's server stopped while starting")
            if time.monotonic() > end:
                raise TimeoutError("the gateway's server did not start")
            time.sleep(0.01)
        return self.url

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["BackgroundServer", "bind", "config", "echo_app", "serve"]
