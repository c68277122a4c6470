"""Latency, bandwidth and cost of each collective over each channel, and the fast/cheap choice.

Pure: every function here is a function of its arguments (a calibration, prices, an operation,
the number of peers and the message size), so the choice a :class:`ChannelSelector` makes can
be tested without a server and replayed by hand. Reading and writing the calibration file are
the only I/O, at the bottom of the module.

**Time.** A channel is described by a per-message overhead ``o`` (seconds, one message from one
function to another: a send on a socket, or a put plus the peer's get on a store) and a
bandwidth ``B`` (bytes/s of one stream); mediated stores also have an aggregate bandwidth
``B_m`` when many peers fetch at once. One message of ``n`` bytes costs ``o + n/B``. Each
operation's time follows the algorithm the channel kind runs (``L = ceil(log2 P)``):

- direct links (``tcp``) and MPI (``mpi``): binomial trees for bcast and reduce (``L``
  messages), recursive doubling for allreduce (``L`` rounds, two more when ``P`` is not a power
  of two) or a ring for large messages (``2(P-1)`` messages of ``n/P``), whichever is faster;
  gather, scatter and allgather move ``(P-1) n`` bytes in ``L`` rounds.
- mediated stores (``redis``, ``s3``, ``file``): every rank uploads once and peers fetch; a
  single reader fetches ``P-1`` objects one after the other (half an overhead each: the put
  is already done), and ``P-1`` readers of one object share ``B_m``.

**Cost** of one operation: the functions' time while they communicate (``P`` functions x time x
memory in GB x the GB-second price), plus the channel's own price: per-request PUT and GET
prices for object storage, and for Redis or the rendezvous VM an instance-hour price prorated
over the operation's time (FMI's cost model does the same: (compute cost + server cost) x time).

Default prices (all configurable through :class:`Prices`), on-demand, AWS us-east-1:

- function time: AWS Lambda, $0.0000166667 per GB-second (x86) and $0.20 per million
  requests -- https://aws.amazon.com/lambda/pricing/
- object storage: Amazon S3 Standard, $0.005 per 1,000 PUT requests and $0.0004 per 1,000 GET
  requests -- https://aws.amazon.com/s3/pricing/
- Redis: Amazon ElastiCache ``cache.t3.small`` (the node FMI's evaluation used), $0.034 per
  hour -- https://aws.amazon.com/elasticache/pricing/
- rendezvous server for direct TCP: Amazon EC2 ``t3.micro``, $0.0104 per hour --
  https://aws.amazon.com/ec2/pricing/on-demand/
- a shared file system and MPI inside an allocation add nothing per operation.

**Calibration.** ``hetfaas bench collectives --calibrate`` measures every channel on the
machine it runs on, fits ``o`` and ``B`` by least squares on (bytes, seconds) samples
(:func:`fit_profile`) and writes them to :func:`default_calibration_path`; :func:`load_profiles`
reads that file and falls back to :data:`DEFAULT_PROFILES`, which were measured the same way on
a 2-vCPU VM (see ``docs/benchmarks.md``).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..exceptions import ConfigurationError

__all__ = [
    "DEFAULT_PROFILES",
    "KINDS",
    "OPERATIONS",
    "ChannelProfile",
    "ChannelSelector",
    "Estimate",
    "Prices",
    "choose",
    "default_calibration_path",
    "estimate",
    "fit_profile",
    "load_profiles",
    "op_requests",
    "op_time",
    "run_cost",
    "save_profiles",
]

OPERATIONS = (
    "send", "bcast", "barrier", "reduce", "allreduce", "gather", "scatter", "allgather", "scan",
)  # fmt: skip

#: The channel kind of each scheme we model (the algorithms it runs).
KINDS = {"tcp": "direct", "mpi": "native", "redis": "mediated", "s3": "mediated",
         "file": "mediated"}  # fmt: skip

HINTS = ("fast", "cheap")


@dataclass(frozen=True)
class ChannelProfile:
    """One channel's calibrated per-message overhead and bandwidths.

    ``overhead_s``: one small message from one function to another. ``bandwidth_Bps``: one
    stream. ``bandwidth_multiple_Bps``: aggregate when several peers fetch at once (mediated
    stores; ``None`` means the same as one stream).
    """

    overhead_s: float
    bandwidth_Bps: float
    bandwidth_multiple_Bps: float | None = None
    source: str = "default"

    def __post_init__(self) -> None:
        if not (self.overhead_s >= 0 and math.isfinite(self.overhead_s)):
            raise ConfigurationError(f"overhead_s must be >= 0, got {self.overhead_s!r}")
        for name in ("bandwidth_Bps", "bandwidth_multiple_Bps"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigurationError(f"{name} must be > 0, got {value!r}")

    @property
    def aggregate_Bps(self) -> float:
        return self.bandwidth_multiple_Bps or self.bandwidth_Bps

    def message_s(self, nbytes: float) -> float:
        return self.overhead_s + nbytes / self.bandwidth_Bps


#: Measured on a 2-vCPU VM (AMD EPYC, Debian 12; loopback: redis-server 7, SeaweedFS
#: ``weed mini``, OpenMPI 4.1 with ``--mca btl tcp,self``) by ``hetfaas bench collectives
#: --calibrate --peers 2,4`` (docs/benchmarks.md, run A; peers pinned one per core). Loopback
#: on one VM: a real network adds its own latency and caps bandwidth, so calibrate where the
#: functions run.
DEFAULT_PROFILES: dict[str, ChannelProfile] = {
    "tcp": ChannelProfile(17e-6, 0.97e9, None, "measured, 2-vCPU VM"),
    "mpi": ChannelProfile(26e-6, 0.74e9, None, "measured, 2-vCPU VM"),
    "redis": ChannelProfile(129e-6, 0.12e9, 0.46e9, "measured, 2-vCPU VM"),
    "s3": ChannelProfile(6.9e-3, 0.091e9, 0.17e9, "measured, 2-vCPU VM"),
    "file": ChannelProfile(194e-6, 1.06e9, 2.4e9, "measured, 2-vCPU VM"),
}


@dataclass(frozen=True)
class Prices:
    """Prices in US dollars (sources in the module docstring); override any field."""

    gb_second: float = 0.0000166667
    function_request: float = 0.20e-6
    s3_put: float = 0.005e-3
    s3_get: float = 0.0004e-3
    redis_instance_hour: float = 0.034
    vm_hour: float = 0.0104
    file_request: float = 0.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (isinstance(value, (int, float)) and value >= 0):
                raise ConfigurationError(f"price {name} must be a number >= 0, got {value!r}")


@dataclass(frozen=True)
class Estimate:
    """What one operation costs on one channel."""

    channel: str
    op: str
    peers: int
    nbytes: int
    time_s: float
    cost_usd: float
    puts: int = 0
    gets: int = 0


def _check(op: str, peers: int, nbytes: float) -> None:
    if op not in OPERATIONS:
        raise ConfigurationError(f"unknown operation {op!r}; known: {', '.join(OPERATIONS)}")
    if not (isinstance(peers, int) and peers >= 1):
        raise ConfigurationError(f"peers must be an int >= 1, got {peers!r}")
    if not nbytes >= 0:
        raise ConfigurationError(f"nbytes must be >= 0, got {nbytes!r}")


def _log2(peers: int) -> int:
    return (peers - 1).bit_length()


def _direct_time(op: str, p: int, n: float, prof: ChannelProfile) -> float:
    o, bw = prof.overhead_s, prof.bandwidth_Bps
    rounds = _log2(p)
    if op == "send":
        return prof.message_s(n)
    if p == 1:
        return 0.0
    if op == "barrier":
        return rounds * o
    if op in ("bcast", "reduce", "scan"):
        return rounds * prof.message_s(n)
    if op == "allreduce":
        # a non-power of two folds the extra ranks in first and out last: floor(log2 P) + 2
        steps = rounds if p & (p - 1) == 0 else rounds + 1
        doubling = steps * prof.message_s(n)
        ring = 2 * (p - 1) * prof.message_s(n / p)
        return min(doubling, ring)
    # gather, scatter, allgather: L rounds, (P-1) n bytes through the busiest link
    return rounds * o + (p - 1) * n / bw


def _mediated_time(op: str, p: int, n: float, prof: ChannelProfile) -> float:
    o, bw, bwm = prof.overhead_s, prof.bandwidth_Bps, prof.aggregate_Bps
    fetch = o / 2 + n / bw  # one more get by the same reader: the put is already there
    if op == "send":
        return prof.message_s(n)
    if p == 1:
        return 0.0
    if op == "barrier":  # a gather and a broadcast of nothing
        return _mediated_time("allreduce", p, 0.0, prof)
    if op == "bcast":
        return prof.message_s(n) + max(0, p - 2) * n / bwm
    if op in ("reduce", "gather", "scan"):
        return prof.message_s(n) + (p - 2) * fetch
    if op == "scatter":
        return prof.message_s(n) + (p - 2) * (o / 2 + n / bw)
    if op == "allreduce":
        return _mediated_time("reduce", p, n, prof) + _mediated_time("bcast", p, n, prof)
    # allgather: every rank fetches P-1 objects; P(P-1) fetches share the store
    return prof.message_s(n) + (p - 2) * o / 2 + p * (p - 1) * n / bwm


def op_time(op: str, peers: int, nbytes: float, profile: ChannelProfile, kind: str) -> float:
    """Seconds one ``op`` among ``peers`` functions takes with ``nbytes`` per rank."""
    _check(op, peers, nbytes)
    if kind in ("direct", "native"):
        return _direct_time(op, peers, float(nbytes), profile)
    if kind == "mediated":
        return _mediated_time(op, peers, float(nbytes), profile)
    raise ConfigurationError(f"unknown channel kind {kind!r}; known: direct, mediated, native")


def op_requests(op: str, peers: int) -> tuple[int, int]:
    """(puts, gets) a mediated store serves for one ``op``, summed over all ranks, as the
    mediated algorithms run them (:mod:`hetfaas.collectives.mediated`). Polls that find
    nothing yet are not counted (on S3 they are billed GETs too)."""
    _check(op, peers, 0)
    p = peers
    if op == "send":
        return 1, 1
    if p == 1:
        return 0, 0
    table = {
        "bcast": (1, p - 1),
        "reduce": (p - 1, p - 1),
        "gather": (p - 1, p - 1),
        "scatter": (p - 1, p - 1),
        "scan": (p - 1, p * (p - 1) // 2),
        "allreduce": (p, 2 * (p - 1)),
        "allgather": (p, p * (p - 1)),
        "barrier": (p, 2 * (p - 1)),
    }
    return table[op]


def estimate(
    channel: str,
    op: str,
    peers: int,
    nbytes: float,
    profiles: Mapping[str, ChannelProfile] | None = None,
    prices: Prices | None = None,
    memory_gb: float = 1.0,
) -> Estimate:
    """Time and cost of one ``op`` over ``channel`` (a scheme: tcp, redis, s3, file, mpi)."""
    profiles = DEFAULT_PROFILES if profiles is None else profiles
    prices = prices or Prices()
    if channel not in profiles or channel not in KINDS:
        known = sorted(set(profiles) & set(KINDS))
        raise ConfigurationError(f"no model for channel {channel!r}; known: {', '.join(known)}")
    if not memory_gb > 0:
        raise ConfigurationError(f"memory_gb must be > 0, got {memory_gb!r}")
    kind = KINDS[channel]
    seconds = op_time(op, peers, nbytes, profiles[channel], kind)
    cost = peers * seconds * memory_gb * prices.gb_second
    puts = gets = 0
    if channel == "s3":
        puts, gets = op_requests(op, peers)
        cost += puts * prices.s3_put + gets * prices.s3_get
    elif channel == "file":
        puts, gets = op_requests(op, peers)
        cost += (puts + gets) * prices.file_request
    elif channel == "redis":
        puts, gets = op_requests(op, peers)
        cost += seconds / 3600 * prices.redis_instance_hour
    elif channel == "tcp":
        cost += seconds / 3600 * prices.vm_hour
    return Estimate(channel, op, peers, int(nbytes), seconds, cost, puts, gets)


def run_cost(
    channel: str,
    peers: int,
    seconds: float,
    ops: Mapping[str, int],
    prices: Prices | None = None,
    memory_gb: float = 1.0,
) -> dict[str, float]:
    """Cost of a whole run that took ``seconds`` on ``peers`` functions and ran ``ops``
    (operation -> count): the functions' time, per-request storage prices, and the Redis or
    rendezvous server prorated over the run. Returns the parts and their ``total``."""
    prices = prices or Prices()
    if channel not in KINDS:
        raise ConfigurationError(f"no model for channel {channel!r}; known: {', '.join(KINDS)}")
    if not (seconds >= 0 and memory_gb > 0):
        raise ConfigurationError("seconds must be >= 0 and memory_gb > 0")
    compute = peers * seconds * memory_gb * prices.gb_second + peers * prices.function_request
    puts = gets = 0
    for op, count in ops.items():
        p, g = op_requests(op, peers)
        puts, gets = puts + p * count, gets + g * count
    storage = server = 0.0
    if channel == "s3":
        storage = puts * prices.s3_put + gets * prices.s3_get
    elif channel == "file":
        storage = (puts + gets) * prices.file_request
    elif channel == "redis":
        server = seconds / 3600 * prices.redis_instance_hour
    elif channel == "tcp":
        server = seconds / 3600 * prices.vm_hour
    return {"compute": compute, "storage": storage, "server": server,
            "total": compute + storage + server}  # fmt: skip


def choose(
    candidates: Iterable[str],
    op: str,
    peers: int,
    nbytes: float,
    hint: str = "fast",
    profiles: Mapping[str, ChannelProfile] | None = None,
    prices: Prices | None = None,
    memory_gb: float = 1.0,
    limits: Mapping[str, float] | None = None,
) -> str:
    """The candidate channel that is fastest (``hint="fast"``) or cheapest (``"cheap"``).

    Ties break on the other criterion, then on the name, so the choice is deterministic and
    every rank of a group makes the same one. A candidate whose ``limits`` (max message bytes)
    ``nbytes`` exceeds is left out.
    """
    if hint not in HINTS:
        raise ConfigurationError(f"unknown hint {hint!r}; known: fast, cheap")
    names = sorted(set(candidates))
    if not names:
        raise ConfigurationError("choose() needs at least one candidate channel")
    limits = limits or {}
    fitting = [c for c in names if nbytes <= limits.get(c, math.inf)]
    if not fitting:
        raise ConfigurationError(
            f"no candidate channel takes {int(nbytes)} bytes ({', '.join(names)})"
        )
    ests = [estimate(c, op, peers, nbytes, profiles, prices, memory_gb) for c in fitting]
    if hint == "fast":
        best = min(ests, key=lambda e: (e.time_s, e.cost_usd, e.channel))
    else:
        best = min(ests, key=lambda e: (e.cost_usd, e.time_s, e.channel))
    return best.channel


@dataclass
class ChannelSelector:
    """Per-operation choice among several connected channels, for a Communicator's ``hint``.

    ``channels`` maps a scheme to the caller's channel object (connected, any type: the
    selector only returns one of them). The choice depends only on (op, peers, nbytes), so
    every rank of a group that gives the same arguments picks the same channel.
    """

    channels: Mapping[str, Any]
    hint: str = "fast"
    profiles: Mapping[str, ChannelProfile] = field(default_factory=lambda: load_profiles())
    prices: Prices = field(default_factory=Prices)
    memory_gb: float = 1.0
    limits: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.hint not in HINTS:
            raise ConfigurationError(f"unknown hint {self.hint!r}; known: fast, cheap")
        if not self.channels:
            raise ConfigurationError("a ChannelSelector needs at least one channel")
        unknown = sorted(set(self.channels) - set(self.profiles))
        if unknown:
            raise ConfigurationError(
                f"no model for channel(s) {', '.join(unknown)}; known: "
                f"{', '.join(sorted(self.profiles))}"
            )

    def scheme_for(self, op: str, peers: int, nbytes: float) -> str:
        return choose(
            self.channels, op, peers, nbytes, self.hint, self.profiles, self.prices,
            self.memory_gb, self.limits,
        )  # fmt: skip

    def select(self, op: str, peers: int, nbytes: float) -> Any:
        return self.channels[self.scheme_for(op, peers, nbytes)]


def fit_profile(
    samples: Iterable[tuple[float, float]],
    multiple: Iterable[tuple[float, float]] = (),
    source: str = "calibrated",
) -> ChannelProfile:
    """``seconds = o + bytes / B`` fitted on (bytes, seconds) samples, robustly.

    A least-squares line over sizes from 8 B to 64 MB is steered by the large sizes and
    leaves the intercept to noise, so the fit anchors on the smallest size: ``1/B`` is the
    least-squares slope from it to the large sizes (1 MiB and up when measured), and ``o``
    what remains of the smallest size's time. ``multiple``: (bytes moved in total, seconds)
    with several readers at once, for ``B_m``.
    """
    pts = sorted((float(b), float(s)) for b, s in samples)
    if len({b for b, _ in pts}) < 2:
        raise ConfigurationError("fit_profile needs samples at two message sizes or more")
    n0 = pts[0][0]
    t0 = min(s for b, s in pts if b == n0)
    far = (
        [(b, s) for b, s in pts if b >= max(16 * n0, 1 << 20)]
        or [(b, s) for b, s in pts if b >= 16 * max(n0, 1.0)]
        or [(b, s) for b, s in pts if b > n0]
    )
    # least squares through the anchor: the large sizes, where bandwidth shows, weigh most
    slope = sum((b - n0) * (s - t0) for b, s in far) / sum((b - n0) ** 2 for b, _ in far)
    if slope <= 0:  # flat: bandwidth beyond what the sizes can show
        slope = 1e-12
    overhead = t0 - n0 * slope
    if overhead <= 0:
        overhead = t0
    multi = [(float(b), float(s)) for b, s in multiple]
    bwm = None
    if multi:
        rates = [b / max(s - overhead, 1e-9) for b, s in multi if b > 0]
        bwm = max(rates) if rates else None
    return ChannelProfile(overhead, 1.0 / slope, bwm, source)


# --- the calibration file: the only I/O here --------------------------------------------------


def default_calibration_path() -> Path:
    """``$HETFAAS_COLLECTIVES_MODEL``, else ``~/.cache/hetfaas/collectives-model.json``."""
    env = os.environ.get("HETFAAS_COLLECTIVES_MODEL")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hetfaas" / "collectives-model.json"


def save_profiles(
    profiles: Mapping[str, ChannelProfile], path: str | Path | None = None,
    machine: Mapping[str, Any] | None = None,
) -> Path:  # fmt: skip
    """Write a calibration (atomically) that :func:`load_profiles` reads back."""
    target = Path(path) if path else default_calibration_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "version": 1,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": dict(machine or {}),
        "channels": {name: asdict(prof) for name, prof in sorted(profiles.items())},
    }
    tmp = target.with_suffix(target.suffix + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, target)
    return target


def load_profiles(path: str | Path | None = None) -> dict[str, ChannelProfile]:
    """The calibrated profiles over the defaults; a channel the file lacks keeps its default.

    A missing default file is not an error (nothing was calibrated yet); an explicit ``path``
    that is missing, or a file that is not a calibration, is.
    """
    explicit = path is not None
    target = Path(path) if explicit else default_calibration_path()
    profiles = dict(DEFAULT_PROFILES)
    if not target.exists():
        if explicit:
            raise ConfigurationError(f"no calibration file at {target}")
        return profiles
    try:
        doc = json.loads(target.read_text())
        channels = doc["channels"]
        for name, fields in channels.items():
            known = {k: fields[k] for k in ("overhead_s", "bandwidth_Bps") if k in fields}
            base = profiles.get(name)
            if base is None:
                profiles[name] = ChannelProfile(**fields)
            else:
                profiles[name] = replace(
                    base, **known,
                    bandwidth_multiple_Bps=fields.get("bandwidth_multiple_Bps",
                                                      base.bandwidth_multiple_Bps),
                    source=fields.get("source", "calibrated"),
                )  # fmt: skip
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigurationError(
            f"{target} is not a collectives calibration file ({exc}); "
            "rewrite it with `hetfaas bench collectives --calibrate`"
        ) from exc
    return profiles
