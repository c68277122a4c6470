"""Starting elastic groups: as a map (``ex.map(fn, items, group=GroupSpec(min_size=...))``)
or from a driver that adds members while the run goes on (:class:`ElasticGroup`).

Each member is one call of ``fn`` wrapped in an :class:`ElasticCall`, which opens the call's
:class:`~hetfaas.collectives.elastic.ElasticCommunicator` (passed as ``comm=`` when ``fn``
takes it, and returned by :func:`hetfaas.collectives.current` in any case) and closes it
after. The driver reads the group's store for its generations, members (with their process
ids, so that a test or a benchmark can kill one) and progress.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..exceptions import CollectiveError, ConfigurationError
from .elastic import ElasticCommunicator, check_channel
from .group import GroupSpec, _takes_comm
from .membership import Generation, MembershipPolicy
from .membership_store import META, open_store


def policy_for(spec: GroupSpec) -> MembershipPolicy:
    """The membership policy of an elastic ``GroupSpec``: its sizes, and ``timeout_s`` as the
    longest a re-formation waits for ``min_size`` members."""
    min_size = 1 if spec.min_size is None else spec.min_size
    return MembershipPolicy(min_size=min_size, max_size=spec.max_size,
                            form_timeout_s=spec.timeout_s)  # fmt: skip


class ElasticCall:
    """The function of each member call: ``ElasticCall(...)(*args)`` runs ``fn(*args)`` with
    an elastic communicator of group ``group``."""

    def __init__(
        self,
        fn: Callable[..., Any],
        group: str,
        channel: str,
        policy: MembershipPolicy,
        timeout_s: float,
        *,
        expected: int | None = None,
        store_commits: bool = False,
    ) -> None:
        self.fn = fn
        self.group = group
        self.channel = check_channel(channel)
        self.policy = policy
        self.timeout_s = timeout_s
        self.expected = expected
        self.store_commits = store_commits
        self.pass_comm = _takes_comm(fn)
        self.__qualname__ = getattr(fn, "__qualname__", "ElasticCall")

    @classmethod
    def for_map(cls, fn: Callable[..., Any], spec: GroupSpec, group: str, size: int) -> ElasticCall:
        """The calls of ``ex.map(fn, items, group=spec)`` with an elastic ``spec``: the
        ``size`` items are the founders."""
        policy = policy_for(spec)
        if size < policy.min_size:
            raise ConfigurationError(
                f"an elastic map of {size} item(s) can never reach min_size={policy.min_size}"
            )
        if size > policy.cap:
            raise ConfigurationError(
                f"an elastic map of {size} items is over max_size={policy.max_size}; the rest "
                "would only wait: use ElasticGroup to keep spares"
            )
        return cls(fn, group, check_channel(spec.channel), policy, spec.timeout_s, expected=size)

    def __call__(self, *args: Any) -> Any:
        from .comm import _current

        with ElasticCommunicator(
            self.group, self.channel, self.policy, timeout_s=self.timeout_s,
            expected=self.expected, store_commits=self.store_commits,
        ) as comm:  # fmt: skip
            token = _current.set(comm)  # type: ignore[arg-type]
            try:
                return self.fn(*args, comm=comm) if self.pass_comm else self.fn(*args)
            finally:
                _current.reset(token)


@dataclass(frozen=True)
class Member:
    """A member of the current generation: its rank, id, and where its process runs."""

    rank: int
    member: str
    pid: int
    host: str


class ElasticGroup:
    """The driver of one elastic run: members are calls of ``fn`` on ``executor``; more can
    be added while it runs (each waits to be taken in at the next commit)::

        with ElasticGroup(ex, train, GroupSpec("t", channel=uri, min_size=1)) as group:
            group.add(data, n=2)
            group.wait_for_step(100)
            group.add(data)
            results = group.results()

    ``policy`` overrides the spec's (its sizes included); ``store_commits`` keeps every commit
    in the store too. ``close()`` (or the ``with`` block) removes the group's tables."""

    def __init__(
        self,
        executor: Any,
        fn: Callable[..., Any],
        spec: GroupSpec,
        *,
        policy: MembershipPolicy | None = None,
        store_commits: bool = False,
    ) -> None:
        if not isinstance(spec, GroupSpec):
            raise ConfigurationError(f"spec must be a GroupSpec, got {spec!r}")
        self.name = f"{spec.name}-{uuid.uuid4().hex[:12]}"
        self.channel = check_channel(spec.channel)
        self.policy = policy or policy_for(spec)
        self._executor = executor
        self._call = ElasticCall(fn, self.name, self.channel, self.policy, spec.timeout_s,
                                 store_commits=store_commits)  # fmt: skip
        self._store = open_store(self.channel, self.name)
        self._futures: list[Any] = []
        self._expected = 0

    def add(self, *args: Any, n: int = 1) -> list[Any]:
        """Start ``n`` more members, each ``fn(*args)``; their futures."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigurationError(f"n must be an int >= 1, got {n!r}")
        if self.generation() is None:  # founders: generation 0 waits for all of them
            self._expected += n
            self._store.put(META, "expected", str(self._expected).encode())
        futures = [self._executor.submit(self._call, *args) for _ in range(n)]
        self._futures.extend(futures)
        return futures

    @property
    def futures(self) -> list[Any]:
        """Every member's future, in the order they were added."""
        return list(self._futures)

    def generation(self) -> Generation | None:
        """The current generation (None before the first one formed)."""
        raw = self._store.get(META, "gen")
        return Generation.from_json(raw) if raw is not None else None

    def generations(self) -> list[Generation]:
        """Every generation so far, oldest first."""
        rows = self._store.entries(META)
        gens = [Generation.from_json(v) for k, v in rows.items() if k.startswith("log.")]
        return sorted(gens, key=lambda g: g.number)

    def members(self) -> list[Member]:
        """The members of the current generation, in rank order, with their process ids."""
        gen = self.generation()
        if gen is None:
            return []
        info = self._store.entries("info")
        out = []
        for rank, m in enumerate(gen.members):
            d = json.loads(info[m]) if m in info else {"pid": -1, "host": ""}
            out.append(Member(rank, m, int(d["pid"]), str(d["host"])))
        return out

    def progress(self) -> dict[str, Any] | None:
        """What rank 0 published at the last commit: generation, version, step, size, at."""
        raw = self._store.get(META, "progress")
        return json.loads(raw) if raw is not None else None

    def wait_for_step(self, step: int, timeout: float = 60.0) -> dict[str, Any]:
        """Block until a commit at ``step`` or later (reading the store every ``poll_s`` of
        the policy); its progress record."""
        end = time.monotonic() + timeout
        while True:
            p = self.progress()
            if p is not None and p["step"] >= step:
                return p
            if self._store.get(META, "ended") is not None:
                raise CollectiveError(f"elastic group {self.name!r} ended before step {step}")
            if time.monotonic() > end:
                raise CollectiveError(
                    f"elastic group {self.name!r} did not commit step {step} within {timeout} s "
                    f"(last progress: {p})"
                )
            time.sleep(self.policy.poll_s)

    def results(self, timeout: float | None = None) -> list[Any]:
        """Each member's result in the order added; a member that failed (a killed worker:
        ``WorkerDied``) gives its exception instead."""
        end = None if timeout is None else time.monotonic() + timeout
        out: list[Any] = []
        for fut in self._futures:
            left = None if end is None else max(0.0, end - time.monotonic())
            try:
                out.append(fut.result(left))
            except Exception as exc:
                if not fut.done():  # the wait timed out: not the member's result
                    raise
                out.append(exc)
        return out

    def close(self) -> None:
        """Remove the group's tables (the generations' log stays until it expires)."""
        try:
            self._store.drop()
        finally:
            self._store.close()

    def __enter__(self) -> ElasticGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["ElasticCall", "ElasticGroup", "Member", "policy_for"]
