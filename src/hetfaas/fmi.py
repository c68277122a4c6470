"""FMI's Python interface on hetfaas: scripts written for FMI run after changing ``import fmi``
to ``from hetfaas import fmi``.

FMI (the FaaS Message Interface, seed 001) exposes a ``Communicator(peer_id, num_peers,
config_path, comm_name, faas_memory)`` whose collectives take FMI's argument order and an
explicit data type: ``comm.bcast(42, 0, fmi.types(fmi.datatypes.int))``,
``comm.allreduce(x, fmi.func(fmi.op.sum), fmi.types(fmi.datatypes.double))``. This module
gives the same names and behaviour on top of :class:`hetfaas.collectives.Communicator`:

- FMI's JSON configuration: the ``backends`` block (``S3``, ``Redis``, ``Direct``; entries
  with ``"enabled": false`` are skipped) becomes our channels (``s3://``, ``redis://``,
  ``tcp://`` through the hetfaas rendezvous server, which plays FMI's hole puncher); two
  entries of our own are accepted too, ``File`` (``{"path": ...}``, a shared directory) and
  ``MPI``. ``S3`` takes FMI's ``bucket_name`` and ``s3_region``, plus ``endpoint`` (and
  optional ``access_key_id``/``secret_access_key``) for an S3-compatible server. The largest
  ``max_timeout`` (milliseconds, as in FMI) is the deadline of each operation.
- The ``model`` block (``performance`` in older FMI releases): per-backend ``overhead`` (ms)
  and ``bandwidth`` / ``bandwidth_single`` / ``bandwidth_multiple`` (MB/s) replace our
  calibrated figures for that channel, and prices (``upload_price`` and ``download_price`` per
  request for S3, ``instance_price`` per hour for Redis, ``vm_price`` per hour for Direct)
  replace our defaults; a ``FaaS`` entry may set ``gb_second``. ``hint`` (fast or cheap) then
  picks a channel per operation from these figures (:mod:`hetfaas.collectives.selector`).
- Types: ``int`` and ``double`` are scalars; ``int_list`` and ``double_list`` with a length
  ``n`` are lists. ``gather`` returns the flat list of every rank's values at the root (an
  empty list elsewhere), ``scatter`` splits a list of ``n`` (a multiple of the number of
  peers) into equal parts, reductions of lists work element by element (a custom function
  is called on pairs of elements), and a custom function that is not both commutative and
  associative is applied in rank order, as FMI does.
"""

from __future__ import annotations

import contextlib
import enum
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from .collectives import model
from .collectives.comm import Communicator as _Communicator
from .collectives.ops import MAX, MIN, PROD, SUM, ReduceOp
from .collectives.selector import ChannelChoice
from .exceptions import ConfigurationError

__all__ = ["Communicator", "datatypes", "func", "hints", "load_config", "op", "types"]


class datatypes(enum.Enum):  # FMI's name, lower case
    """FMI's data types."""

    int = 0
    double = 1
    int_list = 2
    double_list = 3


class op(enum.Enum):  # FMI's name, lower case
    """FMI's reduction operators."""

    sum = 0
    prod = 1
    max = 2
    min = 3
    custom = 4


class hints(enum.Enum):  # FMI's name, lower case
    """FMI's channel-selection hints."""

    cheap = 0
    fast = 1


class types:  # FMI's name, lower case
    """A data type and, for lists, the number of elements: ``types(datatypes.int_list, 4)``."""

    def __init__(self, datatype: datatypes, num_objects: int | None = None) -> None:
        if not isinstance(datatype, datatypes):
            raise ConfigurationError(
                f"types() needs an fmi.datatypes member (int, double, int_list, double_list), "
                f"got {datatype!r}"
            )
        is_list = datatype in (datatypes.int_list, datatypes.double_list)
        if num_objects is not None and (
            isinstance(num_objects, bool) or not isinstance(num_objects, int) or num_objects < 0
        ):
            raise ConfigurationError(f"a list length must be an int >= 0, got {num_objects!r}")
        if is_list and num_objects is None:
            raise ConfigurationError(f"{datatype.name} needs a length: types({datatype}, n)")
        self.datatype = datatype
        self.num_objects = num_objects if is_list else 1
        self.is_list = is_list
        self.scalar: type = int if datatype in (datatypes.int, datatypes.int_list) else float

    def __repr__(self) -> str:
        n = f", {self.num_objects}" if self.is_list else ""
        return f"fmi.types(fmi.datatypes.{self.datatype.name}{n})"

    def _item(self, x: Any) -> int | float:
        if self.scalar is int:
            if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
                raise ConfigurationError(f"{self!r} holds ints, got {x!r}")
            return int(x)
        if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
            raise ConfigurationError(f"{self!r} holds floats, got {x!r}")
        return float(x)

    def check(self, value: Any, length: int | None = None) -> Any:
        """``value`` converted to this type (a list of ``length`` elements for lists)."""
        if not self.is_list:
            return self._item(value)
        if isinstance(value, np.ndarray):
            value = value.tolist()
        if not isinstance(value, (list, tuple)):
            raise ConfigurationError(f"{self!r} needs a list, got {type(value).__name__}")
        want = self.num_objects if length is None else length
        if len(value) != want:
            raise ConfigurationError(f"{self!r} needs {want} elements, got {len(value)}")
        return [self._item(x) for x in value]


class func:  # FMI's name, lower case
    """A reduction: ``func(op.sum)`` or ``func(op.custom, fn, commutative, associative)``."""

    def __init__(
        self,
        operator: op,
        fn: Callable[[Any, Any], Any] | None = None,
        commutative: bool = False,
        associative: bool = False,
    ) -> None:
        if not isinstance(operator, op):
            raise ConfigurationError(
                f"func() needs an fmi.op member (sum, prod, max, min, custom), got {operator!r}"
            )
        if operator is op.custom and not callable(fn):
            raise ConfigurationError("func(op.custom, fn, commutative, associative) needs fn")
        if operator is not op.custom and fn is not None:
            raise ConfigurationError(f"func(op.{operator.name}) takes no function")
        self.op, self.fn = operator, fn
        self.commutative, self.associative = bool(commutative), bool(associative)

    def reduce_op(self, dtype: types) -> ReduceOp:
        """Our op for data of ``dtype``; custom functions apply to pairs of elements and their
        results are converted back to the element type, as FMI's typed buffers do."""
        if self.op is not op.custom:
            return {op.sum: SUM, op.prod: PROD, op.max: MAX, op.min: MIN}[self.op]
        fn: Callable[[Any, Any], Any] = self.fn  # type: ignore[assignment]  # checked above
        cast = dtype.scalar
        if dtype.is_list:

            def elementwise(a: Any, b: Any) -> Any:
                return [cast(fn(x, y)) for x, y in zip(a, b, strict=True)]

            combine = elementwise
        else:

            def combine(a: Any, b: Any) -> Any:
                return cast(fn(a, b))

        return ReduceOp(combine, self.commutative, self.associative, name="fmi-custom")


# --- configuration ----------------------------------------------------------------------------


def _enabled(entry: Any) -> bool:
    flag = entry.get("enabled", True)
    return flag is True or str(flag).lower() == "true"


def _backend_uri(name: str, entry: dict[str, Any], path: Path) -> str:
    try:
        if name == "Redis":
            return f"redis://{entry.get('host', '127.0.0.1')}:{int(entry.get('port', 6379))}/0"
        if name == "Direct":
            return f"tcp://{entry['host']}:{int(entry['port'])}"
        if name == "S3":
            query = {"region": entry.get("s3_region"), "endpoint": entry.get("endpoint"),
                     "access_key_id": entry.get("access_key_id"),
                     "secret_access_key": entry.get("secret_access_key")}  # fmt: skip
            q = "&".join(f"{k}={quote(str(v), safe=':/')}" for k, v in query.items() if v)
            return f"s3://{entry['bucket_name']}" + (f"?{q}" if q else "")
        if name == "File":
            return f"file://{Path(entry['path']).expanduser().resolve()}"
        if name == "MPI":
            return "mpi://"
    except KeyError as exc:
        raise ConfigurationError(f"{path}: backend {name} lacks {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{path}: backend {name}: {exc}") from None
    raise ConfigurationError(
        f"{path}: unknown backend {name!r}; known: S3, Redis, Direct (FMI), File, MPI"
    )


_SCHEME = {"S3": "s3", "Redis": "redis", "Direct": "tcp", "File": "file", "MPI": "mpi"}


def load_config(
    config_path: str | Path,
) -> tuple[list[str], dict[str, model.ChannelProfile], model.Prices, float]:
    """(channel URIs, model profiles, prices, timeout in seconds) from an FMI JSON file."""
    path = Path(config_path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigurationError(f"FMI configuration {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"FMI configuration {path} is not JSON: {exc}") from None
    backends = doc.get("backends") if isinstance(doc, dict) else None
    if not isinstance(backends, dict):
        raise ConfigurationError(f"{path}: no 'backends' block (S3, Redis, Direct)")
    uris, timeouts = [], []
    profiles = model.load_profiles()
    for name, entry in backends.items():
        if not isinstance(entry, dict):
            raise ConfigurationError(f"{path}: backend {name} must be an object")
        if not _enabled(entry):
            continue
        uris.append(_backend_uri(name, entry, path))
        if "max_timeout" in entry:
            timeouts.append(float(entry["max_timeout"]) / 1000)
    if not uris:
        raise ConfigurationError(f"{path}: every backend is disabled")
    figures = doc.get("model", doc.get("performance", {})) or {}
    if not isinstance(figures, dict):
        raise ConfigurationError(f"{path}: 'model' must be an object")
    price_fields: dict[str, float] = {}
    try:
        for name, entry in figures.items():
            if name == "FaaS":
                if "gb_second" in entry:
                    price_fields["gb_second"] = float(entry["gb_second"])
                continue
            scheme = _SCHEME.get(name)
            if scheme is None:
                raise ConfigurationError(f"{path}: model for unknown backend {name!r}")
            base = profiles[scheme]
            bw = entry.get("bandwidth", entry.get("bandwidth_single"))
            profiles[scheme] = model.ChannelProfile(
                float(entry["overhead"]) / 1000 if "overhead" in entry else base.overhead_s,
                float(bw) * 1e6 if bw is not None else base.bandwidth_Bps,
                float(entry["bandwidth_multiple"]) * 1e6
                if "bandwidth_multiple" in entry else base.bandwidth_multiple_Bps,
                f"FMI configuration {path.name}",
            )  # fmt: skip
            for key, field in (("upload_price", "s3_put"), ("download_price", "s3_get"),
                               ("instance_price", "redis_instance_hour"),
                               ("vm_price", "vm_hour")):  # fmt: skip
                if key in entry:
                    price_fields[field] = float(entry[key])
        prices = model.Prices(**price_fields)
    except (TypeError, ValueError, AttributeError) as exc:
        raise ConfigurationError(f"{path}: bad 'model' block: {exc}") from None
    timeout_s = max(timeouts) if timeouts else 60.0
    if not timeout_s > 0:
        raise ConfigurationError(f"{path}: max_timeout must be > 0 milliseconds")
    return uris, profiles, prices, timeout_s


# --- the communicator -------------------------------------------------------------------------


class Communicator:
    """FMI's communicator: ``Communicator(peer_id, num_peers, config_path, comm_name,
    faas_memory=128)``; ``faas_memory`` (MB) prices the functions' time in the cost model."""

    def __init__(
        self,
        peer_id: int,
        num_peers: int,
        config_path: str | Path,
        comm_name: str,
        faas_memory: int = 128,
    ) -> None:
        if isinstance(faas_memory, bool) or not isinstance(faas_memory, (int, float)):
            raise ConfigurationError(f"faas_memory is in MB, got {faas_memory!r}")
        if not faas_memory > 0:
            raise ConfigurationError(f"faas_memory must be > 0 MB, got {faas_memory!r}")
        uris, profiles, prices, timeout_s = load_config(config_path)
        self._choice = ChannelChoice(uris, "fast", profiles, prices, faas_memory / 1024)
        self._comm = _Communicator(peer_id, num_peers, comm_name, self._choice, timeout_s)
        self.peer_id, self.num_peers = peer_id, num_peers

    def hint(self, hint: hints | str) -> None:
        """Prefer the fastest (``hints.fast``) or the cheapest (``hints.cheap``) channel."""
        name = hint.name if isinstance(hint, hints) else hint
        self._choice.hint = name

    @property
    def channels(self) -> list[str]:
        """The schemes of the enabled backends."""
        return self._choice.schemes

    def close(self) -> None:
        self._comm.close()

    def __enter__(self) -> Communicator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # FMI releases its channels when the communicator goes away
        with contextlib.suppress(Exception):
            self.close()

    @staticmethod
    def _type(dtype: Any) -> types:
        if not isinstance(dtype, types):
            raise ConfigurationError(f"expected fmi.types(...), got {dtype!r}")
        return dtype

    def send(self, data: Any, dest: int, dtype: types) -> None:
        self._comm.send(self._type(dtype).check(data), dest)

    def recv(self, src: int, dtype: types) -> Any:
        return self._type(dtype).check(self._comm.recv(src))

    def bcast(self, data: Any, root: int, dtype: types) -> Any:
        t = self._type(dtype)
        value = t.check(data) if self.peer_id == root else None
        return t.check(self._comm.bcast(value, root))

    def barrier(self) -> None:
        self._comm.barrier()

    def gather(self, data: Any, root: int, dtype: types) -> list[Any]:
        t = self._type(dtype)
        value = t.check(data)
        parts = self._comm.gather(value if t.is_list else [value], root)
        if parts is None:
            return []
        return [x for part in parts for x in part]

    def scatter(self, data: Any, root: int, dtype: types) -> list[Any]:
        t = self._type(dtype)
        if not t.is_list:
            raise ConfigurationError("scatter needs a list type (int_list or double_list)")
        if t.num_objects % self.num_peers:
            raise ConfigurationError(
                f"scatter: {t.num_objects} elements do not split among {self.num_peers} peers"
            )
        k = t.num_objects // self.num_peers
        parts = None
        if self.peer_id == root:
            values = t.check(data)
            parts = [values[i * k : (i + 1) * k] for i in range(self.num_peers)]
        return t.check(self._comm.scatter(parts, root), k)

    def _reduction(self, data: Any, f: func, dtype: types) -> tuple[Any, ReduceOp, types]:
        t = self._type(dtype)
        if not isinstance(f, func):
            raise ConfigurationError(f"expected fmi.func(...), got {f!r}")
        value = t.check(data)
        if t.is_list and f.op is not op.custom:  # built-ins: whole arrays through numpy
            value = np.asarray(value, dtype=np.int64 if t.scalar is int else np.float64)
        return value, f.reduce_op(t), t

    @staticmethod
    def _out(t: types, result: Any) -> Any:
        if isinstance(result, np.ndarray):
            result = result.tolist()
        return t.check(result)

    def reduce(self, data: Any, root: int, f: func, dtype: types) -> Any:
        value, rop, t = self._reduction(data, f, dtype)
        result = self._comm.reduce(value, rop, root)
        return None if result is None else self._out(t, result)

    def allreduce(self, data: Any, f: func, dtype: types) -> Any:
        value, rop, t = self._reduction(data, f, dtype)
        return self._out(t, self._comm.allreduce(value, rop))

    def scan(self, data: Any, f: func, dtype: types) -> Any:
        value, rop, t = self._reduction(data, f, dtype)
        return self._out(t, self._comm.scan(value, rop))
