"""Inference functions: models registered by name, callable like any other function.

``InferenceFunction`` holds model specs (a factory returning a torch module, optional weights
in a store, a handler). Calling it, ``infer("resnet-like-7", batch)``, runs the model in the
calling process with a per-process ModelCache, so ``ex.submit(infer, "resnet-like-7", batch)``
on any Executor keeps models warm in the worker that ran them. The scheduler-driven path,
with the policies, is ``runtime.Runtime``; both load models the same way (``load_model``).

Weights are read from a store named by URI scheme: ``file:///abs/path.pt`` (or a plain path)
and ``s3://bucket/key`` (boto3, imported only then; endpoint and keys from the usual AWS
variables, or ``?endpoint=...&access_key_id=...&secret_access_key=...`` for an S3-compatible
server) and ``redis://host:port/db/key`` (redis-py, imported only then; the key is the rest of
the path, so ``redis://127.0.0.1:6379/0/weights/a.pt`` is key ``weights/a.pt`` of database 0).
Unknown schemes fail with the list of known ones.
"""

from __future__ import annotations

import io
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlparse

from ..exceptions import (
    ConfigurationError,
    ModelLoadError,
    ModelTooLarge,
    ServingError,
    UnknownModel,
)
from .cache import ModelCache

Factory = Callable[[], Any]  # () -> torch.nn.Module
Handler = Callable[[Any, Any], Any]  # (module, batch) -> output


def _read_file(uri: str) -> bytes:
    parsed = urlparse(uri)
    path = parsed.path if parsed.scheme == "file" else uri
    with open(path, "rb") as fh:
        return fh.read()


def _write_file(uri: str, data: bytes) -> None:
    parsed = urlparse(uri)
    path = parsed.path if parsed.scheme == "file" else uri
    with open(path, "wb") as fh:
        fh.write(data)


def _s3(uri: str) -> tuple[Any, str, str]:
    """A boto3 client, bucket and key for ``s3://bucket/key[?endpoint=..&access_key_id=..
    &secret_access_key=..&region=..]``; without a query, boto3's own configuration."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise ConfigurationError(
            "s3:// weights need boto3: pip install 'hetfaas[serving]'"
        ) from exc
    parsed = urlparse(uri)
    query = dict(parse_qsl(parsed.query))
    unknown = set(query) - {"endpoint", "access_key_id", "secret_access_key", "region"}
    if unknown:
        raise ConfigurationError(f"unknown s3:// options {sorted(unknown)} in {uri!r}")
    kwargs: dict[str, Any] = {}
    if "endpoint" in query:  # an S3-compatible server: path-style addressing
        kwargs["endpoint_url"] = query["endpoint"]
        kwargs["config"] = Config(s3={"addressing_style": "path"})
        kwargs["region_name"] = query.get("region", "us-east-1")
    if "access_key_id" in query:
        kwargs["aws_access_key_id"] = query["access_key_id"]
        kwargs["aws_secret_access_key"] = query.get("secret_access_key")
    key = parsed.path.lstrip("/")
    if not parsed.netloc or not key:
        raise ConfigurationError(f"an s3:// weight URI names a bucket and a key: {uri!r}")
    return boto3.client("s3", **kwargs), parsed.netloc, key


def _read_s3(uri: str) -> bytes:
    client, bucket, key = _s3(uri)
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def _write_s3(uri: str, data: bytes) -> None:
    client, bucket, key = _s3(uri)
    client.put_object(Bucket=bucket, Key=key, Body=data)


# one client (and its connection pool) per server and database, per process
_REDIS_CLIENTS: dict[str, Any] = {}
_REDIS_LOCK = threading.Lock()


def _redis(uri: str) -> tuple[Any, str]:
    """A redis-py client and the key for ``redis://[user:password@]host:port/db/key``."""
    try:
        import redis
    except ImportError as exc:
        raise ConfigurationError(
            "redis:// weights need redis-py: pip install 'hetfaas[collectives]'"
        ) from exc
    parsed = urlparse(uri)
    db, _, key = parsed.path.lstrip("/").partition("/")
    if not parsed.hostname or not db.isdigit() or not key:
        raise ConfigurationError(
            f"a redis:// weight URI names a server, a database number and a key "
            f"(redis://host:port/0/key), not host {parsed.hostname!r} path {parsed.path!r}"
        )
    base = f"redis://{parsed.netloc}/{db}"
    with _REDIS_LOCK:
        client = _REDIS_CLIENTS.get(base)
        if client is None:
            client = _REDIS_CLIENTS[base] = redis.Redis.from_url(base)
    return client, key


def _read_redis(uri: str) -> bytes:
    client, key = _redis(uri)
    data = client.get(key)
    if data is None:
        raise FileNotFoundError(f"no key {key!r} in the redis:// store")
    return bytes(data)


def _write_redis(uri: str, data: bytes) -> None:
    client, key = _redis(uri)
    client.set(key, data)


STORES: dict[str, tuple[Callable[[str], bytes], Callable[[str, bytes], None]]] = {
    "file": (_read_file, _write_file),
    "": (_read_file, _write_file),
    "s3": (_read_s3, _write_s3),
    "redis": (_read_redis, _write_redis),
}


def _store(uri: str) -> tuple[Callable[[str], bytes], Callable[[str, bytes], None]]:
    scheme = urlparse(uri).scheme
    if scheme not in STORES:
        known = ", ".join(f"{s}://" for s in STORES if s)
        raise ConfigurationError(f"unknown weight store {scheme!r} in {uri!r}; known: {known}")
    return STORES[scheme]


def save_weights(module: Any, uri: str) -> int:
    """Write ``module``'s state dict to ``uri``; returns the bytes written."""
    import torch

    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    data = buf.getvalue()
    _store(uri)[1](uri, data)
    return len(data)


def module_bytes(factory: Factory) -> int:
    """Bytes of a module's parameters and buffers, built on the meta device (no memory)."""
    import torch

    try:
        with torch.device("meta"):
            module = factory()
    except Exception:  # a factory that cannot build on meta: build it for real once
        module = factory()
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def default_handler(module: Any, batch: Any) -> Any:
    """Run the batch through the module without autograd, on the module's device."""
    import torch

    with torch.inference_mode():
        param = next(module.parameters(), None)
        if param is not None and isinstance(batch, torch.Tensor):
            batch = batch.to(param.device)
        out = module(batch)
    return out.cpu() if isinstance(out, torch.Tensor) else out


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: how to build it, where its weights are, how to run a batch."""

    name: str
    factory: Factory
    handler: Handler
    weights: str | None
    size_bytes: int


def load_model(spec: ModelSpec, device: Any) -> Any:
    """Build the module, read its weights, move it to ``device``; errors are ModelLoadError."""
    try:
        import torch

        module = spec.factory()
        if spec.weights:
            data = _store(spec.weights)[0](spec.weights)
            module.load_state_dict(torch.load(io.BytesIO(data), map_location="cpu"))
        return module.to(device).eval()
    except ConfigurationError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"loading model {spec.name!r} failed: {exc!r}") from exc


# per process: function id -> (cache accounting, modules by name); the worker side of calls
_PROCESS_MODELS: dict[str, tuple[ModelCache, dict[str, Any]]] = {}
_PROCESS_LOCK = threading.Lock()


class InferenceFunction:
    """Models by name, callable as ``fn(model_name, batch)`` in any process.

    ``memory_bytes`` is the model memory each process may fill before it evicts (LRU);
    ``device`` is where models run (default: the first visible GPU, else the CPU).
    """

    def __init__(self, memory_bytes: int = 1 << 30, device: str = "") -> None:
        if not isinstance(memory_bytes, int) or memory_bytes <= 0:
            raise ConfigurationError(f"memory_bytes must be a positive int, not {memory_bytes!r}")
        self.id = uuid.uuid4().hex
        self.memory_bytes = memory_bytes
        self.device = device
        self.specs: dict[str, ModelSpec] = {}

    def register(
        self,
        name: str,
        factory: Factory,
        handler: Handler = default_handler,
        weights: str | None = None,
        size_bytes: int | None = None,
    ) -> ModelSpec:
        """Add a model; its size is measured from the factory unless given."""
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"a model name must be a non-empty str, not {name!r}")
        if name in self.specs:
            raise ConfigurationError(f"model {name!r} is already registered")
        if not callable(factory) or not callable(handler):
            raise ConfigurationError(f"model {name!r}: factory and handler must be callable")
        if weights is not None:
            _store(weights)
        if size_bytes is None:
            size_bytes = max(1, module_bytes(factory))
        if not isinstance(size_bytes, int) or size_bytes <= 0:
            raise ConfigurationError(f"model {name!r}: size_bytes must be a positive int")
        spec = ModelSpec(name, factory, handler, weights, size_bytes)
        self.specs[name] = spec
        return spec

    def spec(self, name: str) -> ModelSpec:
        try:
            return self.specs[name]
        except (KeyError, TypeError):
            known = ", ".join(sorted(self.specs)[:10]) or "none"
            raise UnknownModel(f"unknown model {name!r}; registered: {known}") from None

    def __call__(self, model_name: str, batch: Any) -> Any:
        spec = self.spec(model_name)
        if spec.size_bytes > self.memory_bytes:
            raise ModelTooLarge(
                f"model {model_name!r} needs {spec.size_bytes} bytes; this function's memory "
                f"is {self.memory_bytes}"
            )
        pinned = False
        module = None
        with _PROCESS_LOCK:
            cache, modules = _PROCESS_MODELS.setdefault(
                self.id, (ModelCache(self.memory_bytes), {})
            )
            if model_name in cache:
                cache.touch(model_name)
                cache.pin(model_name)
                pinned, module = True, modules[model_name]
        if module is None:
            loaded = load_model(spec, self._device())
            with _PROCESS_LOCK:
                if model_name not in cache:
                    try:
                        for victim in cache.admit(model_name, spec.size_bytes):
                            del modules[victim]
                        modules[model_name] = loaded
                    except ServingError:
                        pass  # the resident models are all in use: run this one uncached
                if model_name in cache:
                    cache.pin(model_name)
                    pinned = True
                module = modules.get(model_name, loaded)
        try:
            return spec.handler(module, batch)
        finally:
            if pinned:
                with _PROCESS_LOCK:
                    cache.unpin(model_name)

    def _device(self) -> Any:
        import torch

        if self.device:
            return torch.device(self.device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def __repr__(self) -> str:
        return f"InferenceFunction({len(self.specs)} models, {self.memory_bytes} bytes)"
