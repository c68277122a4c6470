"""What a Slurm cluster has, from ``sinfo``: a pure parser of its lines and of every GRES form.

The ``slurm`` backend asks ``sinfo -h -N -o "%N|%c|%m|%G|%T|%P"`` (:data:`SINFO_FORMAT`): one
line per node and partition, fields split by ``|``. :func:`parse_sinfo` reads that output into
one :class:`Node` per node (a node in several partitions is one node), and
:func:`cluster_capacity` sums the usable nodes into the backend's
:class:`~hetfaas.backends.base.Capacity`.

GRES (``%G``) forms handled by :func:`parse_gres`::

    (null)                             no GRES
    gpu                                one untyped GPU
    gpu:2                              two untyped GPUs
    gpu:a100:2                         typed
    gpu:a100:2(S:0) / (S:0-1) / (S:0,2) socket hints (ignored)
    gpu:a100:2(S:0),gpu:v100:1(S:1)    several, comma separated (commas inside hints too)
    gpu:2,mps:200,shard:8              other kinds (kept, not counted as GPUs)
    gpu:1g.10gb:4                      MIG-style type names
    gpu:no_consume:2                   flags between name and count (dropped)
    bandwidth:lustre:4G                counts with K/M/G/T suffixes (powers of 1024)

Lines without ``-N`` name several nodes at once (``node[01-04,07]``, with ``%c`` such as
``4+`` when they differ); such a line counts once per node it names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from .base import Capacity

SINFO_FORMAT = "%N|%c|%m|%G|%T|%P"
SINFO_COMMAND = ("sinfo", "-h", "-N", "-o", SINFO_FORMAT)

# Node states (sinfo %T, lower case, flags joined by "+") in which a node runs nothing new.
_UNUSABLE = {"down", "drain", "drained", "draining", "fail", "failing", "future", "inval",
             "unknown", "not_responding", "reboot_issued", "powering_down"}  # fmt: skip
_SUFFIX = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}
_COUNT = re.compile(r"^(\d+)([kmgtp]?)$", re.IGNORECASE)
_FLAGS = {"no_consume"}


@dataclass(frozen=True)
class Gres:
    """One generic resource of a node: ``name`` (gpu, mps, shard, ...), ``type`` ("" when
    untyped) and ``count``."""

    name: str
    type: str
    count: int


@dataclass(frozen=True)
class Node:
    """One node as ``sinfo`` reports it."""

    name: str
    cpus: int
    memory_mb: int
    gres: tuple[Gres, ...] = ()
    state: str = ""
    partitions: tuple[str, ...] = field(default_factory=tuple)

    @property
    def gpus(self) -> int:
        return sum(g.count for g in self.gres if g.name == "gpu")

    @property
    def gpu_types(self) -> tuple[str, ...]:
        """The type of each GPU of the node, one entry per device ("gpu" when untyped)."""
        return tuple(g.type or "gpu" for g in self.gres if g.name == "gpu" for _ in range(g.count))

    @property
    def usable(self) -> bool:
        """Whether the node can start jobs (not down, drained, failing or not responding)."""
        state = self.state.strip().lower()
        if state.endswith("*"):  # the node does not respond
            return False
        flags = set(state.rstrip("~#!%$@^-").split("+")) - {""}
        return not flags & _UNUSABLE


def _count(text: str) -> int | None:
    """A GRES count (``2``, ``4G``), or None when ``text`` is not a count."""
    m = _COUNT.match(text.strip())
    if not m:
        return None
    return int(m.group(1)) * _SUFFIX[m.group(2).lower()]


def _split_outside_parens(text: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def parse_gres(text: str) -> tuple[Gres, ...]:
    """Every GRES of one ``%G`` field (see the module's docstring for the forms)."""
    text = text.strip()
    if not text or text.lower() in ("(null)", "null", "n/a", "none"):
        return ()
    out = []
    for item in _split_outside_parens(text):
        item = re.sub(r"\(.*?\)", "", item).strip()  # socket hints: (S:0-1), (S:0,2)
        if not item or item.lower() == "(null)":
            continue
        name, *rest = [t for t in item.split(":") if t.strip()]
        rest = [t for t in rest if t.lower() not in _FLAGS]
        count = _count(rest[-1]) if rest else None
        if count is None:  # no count: one of it ("gpu", "gpu:a100")
            count, typ = 1, ":".join(rest)
        else:
            typ = ":".join(rest[:-1])
        out.append(Gres(name.strip(), typ.strip(), count))
    return tuple(out)


def expand_hostlist(text: str) -> list[str]:
    """The node names of a Slurm hostlist: ``node[01-03,07],gpu1`` -> node01 node02 node03
    node07 gpu1 (zero padding kept)."""
    names: list[str] = []
    for part in _split_outside_brackets(text.strip()):
        m = re.match(r"^(.*?)\[([^\]]*)\](.*)$", part)
        if not m:
            names.append(part)
            continue
        head, ranges, tail = m.groups()
        for r in ranges.split(","):
            lo, _, hi = r.partition("-")
            if not hi:
                names.extend(expand_hostlist(f"{head}{lo}{tail}"))
                continue
            width = len(lo) if lo.startswith("0") else 0
            for i in range(int(lo), int(hi) + 1):
                names.extend(expand_hostlist(f"{head}{str(i).zfill(width)}{tail}"))
    return names


def _split_outside_brackets(text: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p for p in (s.strip() for s in parts) if p]


def _int(text: str) -> int:
    """``21695``, ``4+`` (several nodes: the least) -> int; anything else 0."""
    m = re.match(r"^\s*(\d+)", text)
    return int(m.group(1)) if m else 0


def parse_sinfo(output: str) -> list[Node]:
    """The nodes of ``sinfo -h -N -o "%N|%c|%m|%G|%T|%P"`` output, one per node name, in the
    order first seen; a node listed under several partitions is merged (partitions joined).
    Lines that are not of that form are skipped."""
    nodes: dict[str, Node] = {}
    for line in output.splitlines():
        fields = [f.strip() for f in line.split("|")]
        if len(fields) < 2 or not fields[0]:
            continue
        fields += [""] * (6 - len(fields))
        names, cpus, mem, gres, state, partition = fields[:6]
        parsed = parse_gres(gres)
        part = partition.rstrip("*")
        for name in expand_hostlist(names):
            old = nodes.get(name)
            parts = (*old.partitions, part) if old and part not in old.partitions else None
            if old is not None:
                if parts is not None:
                    nodes[name] = replace(old, partitions=parts)
                continue
            nodes[name] = Node(name, _int(cpus), _int(mem), parsed, state, (part,) if part else ())
    return list(nodes.values())


@dataclass(frozen=True)
class ClusterInfo:
    """The sum of the usable nodes, and the most one node has (what one call can get)."""

    nodes: tuple[Node, ...]
    cpus: int
    gpus: int
    memory_mb: int
    gpu_types: tuple[str, ...]
    max_node_cpus: int
    max_node_gpus: int
    max_node_memory_mb: int


def summarize(nodes: Iterable[Node]) -> ClusterInfo:
    """Totals over the usable nodes; when none is usable (all down or drained), over all of
    them, so that the cluster's configured size still shows."""
    every = tuple(nodes)
    live = tuple(n for n in every if n.usable) or every
    return ClusterInfo(
        every,
        sum(n.cpus for n in live),
        sum(n.gpus for n in live),
        sum(n.memory_mb for n in live),
        tuple(t for n in live for t in n.gpu_types),
        max((n.cpus for n in live), default=0),
        max((n.gpus for n in live), default=0),
        max((n.memory_mb for n in live), default=0),
    )


def cluster_capacity(output: str) -> Capacity:
    """The backend's capacity from ``sinfo`` output: cores, GPUs and memory summed over the
    usable nodes, one call per core at most."""
    info = summarize(parse_sinfo(output))
    return Capacity(info.cpus, info.gpus, info.gpu_types, info.cpus, info.memory_mb)


__all__ = [
    "SINFO_COMMAND",
    "SINFO_FORMAT",
    "ClusterInfo",
    "Gres",
    "Node",
    "cluster_capacity",
    "expand_hostlist",
    "parse_gres",
    "parse_sinfo",
    "summarize",
]
