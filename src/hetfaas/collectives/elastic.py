"""Elastic groups: data-parallel functions that lose and gain members without restarting.

As Horovod Elastic does, and unlike torchrun (which restarts every worker on any change), the
state lives in the members' memory: ``comm.commit(state)`` keeps a copy, and when a member's
process dies the others re-form the group with the survivors (new ranks, new size), roll back
to the last commit and go on; a member that joins later receives the committed state and
takes part from the next step. The run never restarts from zero while one member (or, with
``store_commits``, the store) holds a commit.

::

    def train(data, comm):                    # comm: an ElasticCommunicator
        def step(w, i):
            g = comm.allreduce(grad(w, data, i, comm.rank, comm.size)) / comm.size
            return w - 0.1 * g
        return comm.run(step, init_weights(), steps=500, commit_every=10)

    spec = GroupSpec("train", channel="tcp://rdv:7355", min_size=2, max_size=4, timeout_s=30)
    ex.map(train, [data] * 3, group=spec)     # three founders; survivors go on if one dies

    with ElasticGroup(ex, train, spec) as group:   # or drive the membership yourself
        group.add(data, n=3)
        ...
        group.add(data)                         # one more, taken in at the next commit
        results = group.results()

How it works. The group is a sequence of generations, each a fixed list of members with a
:class:`~hetfaas.collectives.Communicator` of its own (group ``<name>.g<n>``). Membership is
kept where the channel meets (:mod:`.membership_store`: Redis, or the tcp:// rendezvous
server) and decided by a pure function (:func:`.membership.decide`). A collective that fails
with :class:`~hetfaas.PeerTimeout` or :class:`~hetfaas.ChannelClosed` starts a re-formation;
over TCP a killed peer's sockets close at once, over Redis a member blocked in a read checks
its peers' liveness every ``watch_s``. At each commit rank 0 looks for joiners and, when one
waits, every member re-forms right after the commit (no rollback).

Each re-formation a member takes part in is a :class:`Reformation` in ``comm.reformations``:
its cause, sizes, and the time from noticing the failure (or asking to join) to the first
step of the new group.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from ..exceptions import (
    ChannelClosed,
    CollectiveError,
    ConfigurationError,
    GroupEnded,
    GroupTooSmall,
    MembershipChanged,
    PeerTimeout,
)
from .channels.base import MediatedChannel, open_channel
from .comm import Communicator
from .membership import (
    Candidate,
    Ended,
    Fail,
    Form,
    Generation,
    MembershipPolicy,
    View,
    decide,
    wants_to_grow,
)
from .membership_store import META, MembershipStore, open_store, store_schemes
from .ops import SUM, ReduceOp

_LOST = (PeerTimeout, ChannelClosed)  # what a dead or departed peer looks like in a collective


@dataclass(frozen=True)
class Reformation:
    """One generation this member entered, seen from this member.

    ``cause`` is the generation's: ``start``, ``failure`` (members were lost) or ``grow``
    (joiners only); ``joined`` is True when this member is one of the newcomers. ``version``
    is the commit the new group starts from; ``rolled_back_steps`` the steps this member had
    run past it (set by :meth:`ElasticCommunicator.run`). ``duration_s`` runs from
    ``noticed_at`` (the failed collective, the commit that saw a joiner, the request to join)
    to ``resumed_at``, when the new group's first step begins (state received)."""

    generation: int
    cause: str
    joined: bool
    size_before: int
    size: int
    rank: int
    lost: int
    added: int
    version: int
    noticed_at: float
    resumed_at: float
    duration_s: float
    rolled_back_steps: int | None = None
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Commit:
    version: int
    blob: bytes  # pickle of (step, state)


class _WatchedChannel(MediatedChannel):
    """A store channel whose blocking reads end early when a peer's process is gone: each
    wait is cut into ``every_s`` slices, and between them the membership store says whether
    the generation's other ranks are still alive."""

    def __init__(self, inner: MediatedChannel, lost: Callable[[], list[int]], every_s: float):
        self.inner = inner
        self._lost = lost
        self.every_s = every_s
        self.scheme = inner.scheme  # type: ignore[misc]
        self.limits = inner.limits

    @classmethod
    def from_uri(cls, uri: str) -> _WatchedChannel:
        raise ConfigurationError("a watched channel wraps an open channel; it has no URI")

    def connect(self, group: str, rank: int, size: int, deadline: float) -> None:
        self.inner.connect(group, rank, size, deadline)
        self.group, self.rank, self.size = group, rank, size

    def close(self) -> None:
        self.inner.close()

    def put(self, key: str, segments: list[Any], total: int, readers: int) -> None:
        self.inner.put(key, segments, total, readers)

    def get(self, key: str, deadline: float, readers: int, waiting_for: int) -> Any:
        while True:
            part = min(deadline, time.monotonic() + self.every_s)
            try:
                return self.inner.get(key, part, readers, waiting_for)
            except PeerTimeout:
                if part >= deadline:
                    raise
            gone = self._lost()
            if gone:
                raise PeerTimeout(
                    f"group {self.group!r} over {self.scheme}: the process of a peer is gone",
                    gone,
                )

    def present(self) -> set[int]:
        return self.inner.present()

    def _put(self, key: str, segments: list[Any], total: int, readers: int) -> None:
        self.inner._put(key, segments, total, readers)

    def _try_get(self, key: str, readers: int) -> Any | None:
        return self.inner._try_get(key, readers)


class _Heartbeat:
    """Tells the store every ``period`` that this member is alive, on a connection of its own
    (which the kernel closes if the process is killed: the store forgets it at once)."""

    def __init__(self, store: MembershipStore, member: str, policy: MembershipPolicy) -> None:
        self.store, self.member, self.policy = store, member, policy
        self._stop = threading.Event()
        store.beat(member, policy.heartbeat_ttl_s)  # alive before anyone can look
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{member}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.policy.heartbeat_s):
            with contextlib.suppress(CollectiveError):  # a store blip: the next beat retries
                self.store.beat(self.member, self.policy.heartbeat_ttl_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.store.close()


def check_channel(channel: Any) -> str:
    """The one URI an elastic group runs on (its scheme must have a membership store)."""
    if not isinstance(channel, str) or urlsplit(channel).scheme not in store_schemes():
        raise ConfigurationError(
            f"an elastic group needs one channel URI of scheme {' or '.join(store_schemes())} "
            f"(its membership is kept there), got {channel!r}"
        )
    return channel


class ElasticCommunicator:
    """One member of an elastic group ``group`` over ``channel`` (``tcp://`` or ``redis://``).

    Until :meth:`begin` (or :meth:`run`) it only waits to be taken in; then ``rank`` and
    ``size`` are those of the current generation, and the collectives are the
    :class:`~hetfaas.collectives.Communicator`'s. A collective that loses a peer re-forms the
    group before it raises :class:`MembershipChanged`; :meth:`restore` then gives the
    committed state the new group goes on from. ``timeout_s`` is each operation's deadline.
    ``expected``: the number of founders, when known (a map's size). ``store_commits`` also
    keeps each commit in the store, so that joiners can resume a run whose every member died.
    """

    def __init__(
        self,
        group: str,
        channel: str,
        policy: MembershipPolicy | None = None,
        *,
        timeout_s: float = 60.0,
        expected: int | None = None,
        store_commits: bool = False,
    ) -> None:
        self.group = group
        self.uri = check_channel(channel)
        self.policy = policy or MembershipPolicy()
        self.timeout_s = float(timeout_s)
        self.store_commits = store_commits
        self.member = f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
        self.reformations: list[Reformation] = []
        self.step = 0
        """The caller's step counter, committed with the state (``run`` keeps it)."""
        self.steps_run = 0
        self._gen: Generation | None = None
        self._comm: Communicator | None = None
        self._committed: _Commit | None = None
        self._first_since = time.time()
        self._finished = self._closed = False
        self._store = open_store(self.uri, group)
        try:
            self._heartbeat = _Heartbeat(open_store(self.uri, group), self.member, self.policy)
            info = {"pid": os.getpid(), "host": socket.gethostname(), "since": self._first_since}
            self._store.put("info", self.member, json.dumps(info).encode())
            if expected:
                self._store.cas(META, "expected", None, str(int(expected)).encode())
        except BaseException:
            self._store.close()
            raise

    # ----------------------------------------------------------------- where we are

    @property
    def rank(self) -> int:
        return self._active().rank

    @property
    def size(self) -> int:
        return self._active().size

    @property
    def generation(self) -> int:
        """The number of the current generation (-1 before :meth:`begin`)."""
        return self._gen.number if self._gen is not None else -1

    @property
    def version(self) -> int:
        """The version of the last commit this member holds (-1: none)."""
        return self._committed.version if self._committed is not None else -1

    def __repr__(self) -> str:
        where = f"generation {self.generation}" if self._gen else "not in yet"
        return f"<ElasticCommunicator {self.group!r} {self.member} {where}>"

    def _active(self) -> Communicator:
        if self._comm is None:
            raise CollectiveError(
                f"elastic group {self.group!r}: this member is not in a generation yet; call "
                "comm.begin(state) (or comm.run(...)) first"
            )
        return self._comm

    # ----------------------------------------------------------------- state

    def begin(self, state: Any = None) -> Any:
        """Join the group and return the state to start from: the committed one when the run
        is under way (a joiner), else rank 0's ``state``, which every founder receives."""
        if self._gen is None:
            self._reform(None)
        while self._committed is None:
            comm = self._active()
            mine = pickle.dumps((self.step, state), protocol=5) if comm.rank == 0 else None
            try:
                blob = comm.bcast(mine, root=0)
            except _LOST as exc:
                self._reform(exc)
                continue
            self._committed = _Commit(0, blob)
        return self.restore()

    def commit(self, state: Any) -> bool:
        """Keep ``state`` (and ``step``) as the point to roll back to. Returns True when the
        group changed here: it took in joiners, or lost a member that had this same commit.
        Raises :class:`MembershipChanged` when it lost one and goes on from another commit."""
        comm = self._active()
        version = self.version + 1
        self._committed = _Commit(version, pickle.dumps((self.step, state), protocol=5))
        grow = False
        if comm.rank == 0:
            self._publish(version, comm.size)
            grow = self._joiner_waits()
        try:
            grow = bool(comm.bcast(grow, root=0))
        except _LOST as exc:
            rec = self._reform(exc)
            if self.version != version:
                raise MembershipChanged(
                    f"elastic group {self.group!r} re-formed while committing version {version}; "
                    f"it goes on from version {self.version}",
                    rec,
                ) from exc
            return True
        if grow:
            self._reform(None)
        return grow

    def restore(self) -> Any:
        """A fresh copy of the last committed state (``step`` is set to its step)."""
        if self._committed is None:
            raise CollectiveError(f"elastic group {self.group!r}: nothing committed yet")
        self.step, state = pickle.loads(self._committed.blob)
        return state

    def run(
        self, step: Callable[[Any, int], Any], state: Any, steps: int, *, commit_every: int = 1
    ) -> Any:
        """``state = step(state, i)`` for ``i`` from the committed step up to ``steps``,
        committing every ``commit_every`` steps and after the last; on a lost member, roll
        back and go on. Returns the final state (None when the run ended before this member
        was taken in)."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ConfigurationError(f"steps must be an int >= 0, got {steps!r}")
        if isinstance(commit_every, bool) or not isinstance(commit_every, int) or commit_every < 1:
            raise ConfigurationError(f"commit_every must be an int >= 1, got {commit_every!r}")
        try:
            state = self.begin(state)
        except GroupEnded:
            return None
        while self.step < steps:
            try:
                at = self.step
                state = step(state, at)
                self.step = at + 1
                self.steps_run += 1
                if self.step % commit_every == 0 or self.step == steps:
                    self.commit(state)
            except MembershipChanged:
                reached = self.step
                state = self.restore()
                last = self.reformations[-1]
                self.reformations[-1] = replace(last, rolled_back_steps=max(0, reached - self.step))
            except GroupEnded:  # the others finished while this member re-formed
                return self.restore() if self._committed is not None else None
        self.finish()
        return state

    def finish(self) -> None:
        """Mark the run ended (members still waiting stop); the last member out of the final
        generation removes the group's tables."""
        if self._finished:
            return
        self._finished = True
        self._store.put(META, "ended", b"1")
        self._store.put("done", self.member, b"")
        if self._gen is not None and set(self._gen.members) <= set(self._store.entries("done")):
            self._store.drop()

    # ----------------------------------------------------------------- collectives

    def _op(self, name: str, *args: Any, **kw: Any) -> Any:
        comm = self._active()
        try:
            return getattr(comm, name)(*args, **kw)
        except _LOST as exc:
            rec = self._reform(exc)
            raise MembershipChanged(
                f"elastic group {self.group!r} lost a member during {name} and re-formed as "
                f"generation {rec.generation} of {rec.size}; restore() the committed state",
                rec,
            ) from exc

    def send(self, obj: Any, dest: int, tag: int = 0) -> None:
        """As :meth:`Communicator.send`."""
        self._op("send", obj, dest, tag)

    def recv(self, source: int, tag: int = 0) -> Any:
        """As :meth:`Communicator.recv`."""
        return self._op("recv", source, tag)

    def bcast(self, obj: Any = None, root: int = 0) -> Any:
        """As :meth:`Communicator.bcast`."""
        return self._op("bcast", obj, root)

    def barrier(self) -> None:
        """As :meth:`Communicator.barrier`."""
        self._op("barrier")

    def reduce(self, obj: Any, op: ReduceOp | Any = SUM, root: int = 0) -> Any:
        """As :meth:`Communicator.reduce`."""
        return self._op("reduce", obj, op, root)

    def allreduce(self, obj: Any, op: ReduceOp | Any = SUM) -> Any:
        """As :meth:`Communicator.allreduce`."""
        return self._op("allreduce", obj, op)

    def gather(self, obj: Any, root: int = 0) -> list[Any] | None:
        """As :meth:`Communicator.gather`."""
        return self._op("gather", obj, root)

    def scatter(self, objs: list[Any] | None = None, root: int = 0) -> Any:
        """As :meth:`Communicator.scatter`."""
        return self._op("scatter", objs, root)

    def allgather(self, obj: Any) -> list[Any]:
        """As :meth:`Communicator.allgather`."""
        return self._op("allgather", obj)

    def scan(self, obj: Any, op: ReduceOp | Any = SUM) -> Any:
        """As :meth:`Communicator.scan`."""
        return self._op("scan", obj, op)

    # ----------------------------------------------------------------- re-forming

    def _reform(self, error: BaseException | None) -> Reformation:
        """Leave the current generation, wait for the next one that includes this member,
        connect and receive its state."""
        t0, noticed = time.monotonic(), time.time()
        if self._comm is not None:
            with contextlib.suppress(Exception):
                self._comm.close()
            self._comm = None
        current = self._read_generation(self._store.entries(META))
        target = current.number + 1 if current is not None else 0
        self._register(target)
        while True:
            gen = self._await(target)
            comm = None
            try:
                comm = self._open(gen)
                self._sync(comm, gen)
                break
            except _LOST:  # a member of the new generation is gone already: once more
                if comm is not None:
                    with contextlib.suppress(Exception):
                        comm.close()
                self._gen = gen
                target = gen.number + 1
                self._register(target)
        self._gen, self._comm = gen, comm
        rec = Reformation(
            generation=gen.number, cause=gen.cause,
            joined=gen.number > 0 and self.member in gen.added,
            size_before=len(gen.members) - len(gen.added) + len(gen.lost),
            size=len(gen.members), rank=gen.rank_of(self.member), lost=len(gen.lost),
            added=len(gen.added), version=self.version, noticed_at=noticed,
            resumed_at=time.time(), duration_s=time.monotonic() - t0,
            error=f"{type(error).__name__}: {error}" if error is not None else "",
        )  # fmt: skip
        self.reformations.append(rec)
        return rec

    @staticmethod
    def _read_generation(meta: dict[str, bytes]) -> Generation | None:
        raw = meta.get("gen")
        return Generation.from_json(raw) if raw is not None else None

    def _register(self, target: int) -> None:
        gen = self._gen
        rank = gen.rank_of(self.member) if gen is not None and self.member in gen.members else -1
        cand = Candidate(self.member, target, time.time(), self._first_since, self.version, rank)
        self._store.put("waiting", self.member, cand.to_json())

    def _view(self, meta: dict[str, bytes], generation: Generation | None) -> View:
        waiting = tuple(Candidate.from_json(v) for v in self._store.entries("waiting").values())
        return View(
            generation, waiting, frozenset(self._store.alive()), time.time(),
            expected=int(meta.get("expected", b"0")), ended="ended" in meta,
            stored_version=int(meta.get("state_version", b"-1")),
        )  # fmt: skip

    def _await(self, target: int) -> Generation:
        """Poll the store, deciding when this member's view says so, until a generation of
        number ``target`` or later is written; re-register when it does not include us."""
        while True:
            meta = self._store.entries(META)
            gen = self._read_generation(meta)
            if gen is not None and gen.number >= target:
                if self.member in gen.members:
                    return gen
                target = gen.number + 1  # formed without us: wait for the next one
                self._register(target)
                continue
            decision = decide(self._view(meta, gen), self.policy)
            if isinstance(decision, Form):
                new = decision.generation
                if self._store.cas(META, "gen", meta.get("gen"), new.to_json()):
                    self._store.put(META, f"log.{new.number}", new.to_json())
                continue
            if isinstance(decision, Fail):
                raise GroupTooSmall(f"elastic group {self.group!r}: {decision.reason}")
            if isinstance(decision, Ended):
                raise GroupEnded(f"elastic group {self.group!r} ended before this member got in")
            time.sleep(self.policy.poll_s)

    def _open(self, gen: Generation) -> Communicator:
        rank = gen.rank_of(self.member)
        channel: Any = self.uri
        if urlsplit(self.uri).scheme == "redis":
            alive = self._store.alive

            def lost() -> list[int]:
                now_alive = alive()
                return [r for r, m in enumerate(gen.members) if r != rank and m not in now_alive]

            inner = open_channel(self.uri)
            assert isinstance(inner, MediatedChannel)
            channel = _WatchedChannel(inner, lost, self.policy.watch_s)
        comm = Communicator(rank, len(gen.members), f"{self.group}.g{gen.number}", channel,
                            timeout_s=self.policy.connect_s)  # fmt: skip
        comm.timeout_s = self.timeout_s  # connecting has its own deadline, operations this one
        return comm

    def _sync(self, comm: Communicator, gen: Generation) -> None:
        """Everyone takes the committed state the generation starts from."""
        if gen.source is None:
            raw = self._store.get("state", "blob") if gen.version >= 0 else None
            if raw is not None:
                version, blob = pickle.loads(raw)
                self._committed = _Commit(int(version), blob)
            return
        root = gen.rank_of(gen.source)
        mine = None
        if self.member == gen.source and self._committed is not None:
            mine = (self._committed.version, self._committed.blob)
        version, blob = comm.bcast(mine, root=root)
        if self._committed is None or self._committed.version != version:
            self._committed = _Commit(int(version), bytes(blob))

    def _publish(self, version: int, size: int) -> None:
        """Rank 0 at each commit: the progress the driver watches, and the store's copy."""
        assert self._committed is not None
        if self.store_commits:
            self._store.put("state", "blob", pickle.dumps((version, self._committed.blob)))
            self._store.put(META, "state_version", str(version).encode())
        progress = {"generation": self.generation, "version": version, "step": self.step,
                    "size": size, "at": time.time()}  # fmt: skip
        self._store.put(META, "progress", json.dumps(progress).encode())

    def _joiner_waits(self) -> bool:
        gen = self._gen
        if gen is None:
            return False
        waiting = tuple(Candidate.from_json(v) for v in self._store.entries("waiting").values())
        if not any(c.target == gen.number + 1 and c.member not in gen.members for c in waiting):
            return False  # the common case: one read, no liveness query
        view = View(gen, waiting, frozenset(self._store.alive()), time.time())
        return wants_to_grow(view, self.policy)

    # ----------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Leave: stop beating (the others see this member gone) and close the connections."""
        if self._closed:
            return
        self._closed = True
        self._heartbeat.stop()
        if self._comm is not None:
            with contextlib.suppress(Exception):
                self._comm.close()
            self._comm = None
        self._store.close()

    def __enter__(self) -> ElasticCommunicator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "ElasticCommunicator",
    "GroupEnded",
    "GroupTooSmall",
    "MembershipChanged",
    "Reformation",
    "check_channel",
]
