"""Who is in the next generation of an elastic group: a pure function of the group's state.

An elastic group (:mod:`hetfaas.collectives.elastic`) lives as a sequence of *generations*,
each a fixed list of members (rank = index) with a communicator of its own. Members that want
to be in the next generation register as :class:`Candidate` records in the group's store: the
survivors of a failure, the members of a generation that takes in joiners, the joiners
themselves, the founders of generation 0. Every waiting member reads a :class:`View` of the
store and calls :func:`decide`; the first one that gets :class:`Form` writes the generation
with a compare-and-set, the others read it. Nothing here does I/O or reads a clock: the
runtime passes ``now``, the tests pass synthetic states.

The rules:

- **Start** (no generation yet): form when ``expected`` founders (the size of the map, or the
  members the driver started, capped at ``max_size``) have registered, or when ``settle_s``
  has passed since the first one registered and there are at least ``min_size``.
- **Running** (a generation exists and none of its live members has registered): wait. Its
  members check at each commit whether a joiner waits (:func:`wants_to_grow`) and then all
  register, which starts a re-formation.
- **Re-forming**: the expected members are the live members of the current generation plus
  every live candidate. Form as soon as each of them has registered, or once ``settle_s`` has
  passed since the first registration of this re-formation, with at least ``min_size``
  members; past ``form_timeout_s`` with fewer, :class:`Fail`. The previous members keep their
  order (so their ranks shift down over the gaps), joiners follow by arrival, and the list is
  cut at ``max_size``. The new generation starts from the newest committed state any member
  (or the store) holds: it never restarts from zero while one copy remains.
- **Ended**: once the run has ended, a waiting member stops waiting.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..exceptions import ConfigurationError


@dataclass(frozen=True)
class MembershipPolicy:
    """The knobs of an elastic group; each default says why it is what it is."""

    min_size: int = 1
    """The group never runs with fewer members; a re-formation that cannot reach it within
    ``form_timeout_s`` fails."""
    max_size: int | None = None
    """Members past this wait as spares and take the place of one that fails (None: no cap)."""
    settle_s: float = 0.5
    """How long a re-formation waits for live members that have not registered yet (a
    survivor that has not noticed the failure, a founder still starting) before it forms
    without them; they join at the next commit. Longer than one step's imbalance."""
    form_timeout_s: float = 60.0
    """How long a re-formation waits for ``min_size`` members before it fails."""
    heartbeat_s: float = 0.5
    """How often a member tells the store it is alive."""
    heartbeat_ttl_s: float = 3.0
    """A member silent this long is taken as gone (a hung process, a network partition). A
    killed process is noticed sooner: its store connection closes with it."""
    watch_s: float = 0.25
    """How often a member blocked in a collective over a store (Redis) checks that its peers
    are alive, so that a killed peer ends the wait in this long, not at the deadline."""
    poll_s: float = 0.01
    """How often a member waiting for a generation reads the store (a few round trips)."""
    connect_s: float = 10.0
    """How long the members of a new generation wait for each other to connect; one that
    died between the decision and the connection costs this long, then the group re-forms."""

    def __post_init__(self) -> None:
        if isinstance(self.min_size, bool) or not isinstance(self.min_size, int):
            raise ConfigurationError(f"min_size must be an int >= 1, got {self.min_size!r}")
        if self.min_size < 1:
            raise ConfigurationError(f"min_size must be an int >= 1, got {self.min_size!r}")
        if self.max_size is not None and (
            isinstance(self.max_size, bool)
            or not isinstance(self.max_size, int)
            or self.max_size < self.min_size
        ):
            raise ConfigurationError(
                f"max_size must be None or an int >= min_size ({self.min_size}), "
                f"got {self.max_size!r}"
            )
        for name in ("settle_s", "form_timeout_s", "heartbeat_s", "heartbeat_ttl_s", "watch_s",
                     "poll_s", "connect_s"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigurationError(f"{name} must be a positive number, got {value!r}")
        if self.heartbeat_ttl_s <= self.heartbeat_s:
            raise ConfigurationError(
                f"heartbeat_ttl_s ({self.heartbeat_ttl_s}) must be longer than heartbeat_s "
                f"({self.heartbeat_s}), or live members would look gone between beats"
            )

    @property
    def cap(self) -> int:
        """``max_size``, or no limit."""
        return self.max_size if self.max_size is not None else 1 << 30


@dataclass(frozen=True)
class Generation:
    """One generation: its members in rank order, where its state comes from, and what
    changed from the previous one (``lost``: members that left, ``added``: newcomers)."""

    number: int
    members: tuple[str, ...]
    source: str | None  # the member whose committed state everyone loads (None: the store's)
    version: int  # the committed version it starts from (-1: nothing committed yet)
    formed_at: float = 0.0  # wall clock of the member that formed it
    lost: tuple[str, ...] = ()
    added: tuple[str, ...] = ()

    @property
    def cause(self) -> str:
        """``start`` (generation 0), ``failure`` (members were lost) or ``grow``."""
        if self.number == 0:
            return "start"
        return "failure" if self.lost else "grow"

    def rank_of(self, member: str) -> int:
        return self.members.index(member)

    def to_json(self) -> bytes:
        return json.dumps({
            "number": self.number, "members": list(self.members), "source": self.source,
            "version": self.version, "formed_at": self.formed_at, "lost": list(self.lost),
            "added": list(self.added),
        }, sort_keys=True).encode()  # fmt: skip

    @classmethod
    def from_json(cls, raw: bytes | str) -> Generation:
        d = json.loads(raw)
        return cls(int(d["number"]), tuple(d["members"]), d["source"], int(d["version"]),
                   float(d["formed_at"]), tuple(d["lost"]), tuple(d["added"]))  # fmt: skip


@dataclass(frozen=True)
class Candidate:
    """A member waiting to be in generation ``target``: since when (``since``: this
    registration; ``first_since``: its first ever, which orders joiners), the newest version
    it has committed (-1: none), and its rank in the generation it leaves (-1: a newcomer)."""

    member: str
    target: int
    since: float
    first_since: float
    version: int = -1
    rank: int = -1

    def to_json(self) -> bytes:
        return json.dumps({
            "member": self.member, "target": self.target, "since": self.since,
            "first_since": self.first_since, "version": self.version, "rank": self.rank,
        }, sort_keys=True).encode()  # fmt: skip

    @classmethod
    def from_json(cls, raw: bytes | str) -> Candidate:
        d = json.loads(raw)
        return cls(str(d["member"]), int(d["target"]), float(d["since"]),
                   float(d["first_since"]), int(d["version"]), int(d["rank"]))  # fmt: skip


@dataclass(frozen=True)
class View:
    """What a waiting member read from the store, and its clock."""

    generation: Generation | None
    waiting: tuple[Candidate, ...]
    alive: frozenset[str]
    now: float
    expected: int = 0  # founders announced before generation 0 (0: unknown)
    ended: bool = False
    stored_version: int = -1  # the version of the committed state kept in the store


@dataclass(frozen=True)
class Wait:
    """Nothing to do yet; read the store again."""

    reason: str


@dataclass(frozen=True)
class Form:
    """Write this generation (the first writer wins)."""

    generation: Generation


@dataclass(frozen=True)
class Fail:
    """The group cannot reach ``min_size``: stop with this reason."""

    reason: str


@dataclass(frozen=True)
class Ended:
    """The run has ended: a member still waiting will never be used."""


Decision = Wait | Form | Fail | Ended


def _candidates(view: View, target: int) -> dict[str, Candidate]:
    """Live candidates for ``target`` (a member that registered twice counts once: its
    newest registration)."""
    out: dict[str, Candidate] = {}
    for c in view.waiting:
        if c.target == target and c.member in view.alive:
            old = out.get(c.member)
            if old is None or c.since > old.since:
                out[c.member] = c
    return out


def _form(view: View, target: int, chosen: list[Candidate]) -> Form:
    previous = view.generation.members if view.generation is not None else ()
    members = tuple(c.member for c in chosen)
    best = max(chosen, key=lambda c: c.version)  # the first of the newest (max keeps the first)
    source: str | None = best.member if best.version >= 0 else None
    version = best.version
    if view.stored_version > version:  # the store holds a newer commit than any member
        source, version = None, view.stored_version
    return Form(Generation(
        target, members, source, version, view.now,
        lost=tuple(m for m in previous if m not in members),
        added=tuple(m for m in members if m not in previous),
    ))  # fmt: skip


def decide(view: View, policy: MembershipPolicy) -> Decision:
    """The next step of a waiting member (see the module's doc for the rules)."""
    if view.ended:
        return Ended()
    g = view.generation
    target = 0 if g is None else g.number + 1
    cands = _candidates(view, target)
    if not cands:
        return Wait("no live candidate has registered")
    if g is None:
        ordered = sorted(cands.values(), key=lambda c: (c.first_since, c.member))
        began = min(c.since for c in ordered)
        # unknown founders (expected 0): as many as may come, so wait settle_s for them
        want = min(policy.cap, max(view.expected, policy.min_size)) if view.expected else policy.cap
        settled = view.now - began >= policy.settle_s
        if len(ordered) >= want or (settled and len(ordered) >= policy.min_size):
            return _form(view, target, ordered[: policy.cap])
        if view.now - began >= policy.form_timeout_s:
            return Fail(
                f"{len(ordered)} member(s) arrived in {policy.form_timeout_s:g} s; the group "
                f"needs min_size={policy.min_size}"
            )
        return Wait(f"{len(ordered)} of {view.expected or 'unknown'} founders registered")
    old = g.members
    alive_old = [m for m in old if m in view.alive]
    survivors = [cands[m] for m in old if m in cands]
    if not survivors and alive_old:
        return Wait(f"generation {g.number} is running; joiners are taken at its next commit")
    joiners = sorted((c for m, c in cands.items() if m not in old),
                     key=lambda c: (c.first_since, c.member))  # fmt: skip
    chosen = (survivors + joiners)[: policy.cap]
    began = min(c.since for c in (survivors or joiners))
    complete = all(m in cands for m in alive_old)
    if len(chosen) >= policy.min_size and (complete or view.now - began >= policy.settle_s):
        return _form(view, target, chosen)
    if view.now - began >= policy.form_timeout_s:
        return Fail(
            f"only {len(chosen)} member(s) left generation {g.number} alive within "
            f"{policy.form_timeout_s:g} s; the group needs min_size={policy.min_size}"
        )
    if len(chosen) < policy.min_size:
        return Wait(f"{len(chosen)} member(s), fewer than min_size={policy.min_size}")
    missing = [m for m in alive_old if m not in cands]
    return Wait(f"waiting up to settle_s for {len(missing)} live member(s) to register")


def wants_to_grow(view: View, policy: MembershipPolicy) -> bool:
    """Whether the running generation should re-form at this commit to take in joiners: a
    live newcomer waits for the next generation and the group is below ``max_size``."""
    g = view.generation
    if g is None or view.ended or len(g.members) >= policy.cap:
        return False
    return any(c.member not in g.members for c in _candidates(view, g.number + 1).values())


__all__ = [
    "Candidate",
    "Decision",
    "Ended",
    "Fail",
    "Form",
    "Generation",
    "MembershipPolicy",
    "View",
    "Wait",
    "decide",
    "wants_to_grow",
]
