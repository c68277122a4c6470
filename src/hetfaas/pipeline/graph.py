"""The graph of a pipeline: stages, their inputs, and the checks made when it is built.

A stage is a function with its own :class:`~hetfaas.Resources` and concurrency. Its inputs are
upstream stages (or :data:`SOURCE`, the items given to ``run``); a stage with several inputs
is a join: it runs once per item key, when every input has an item of that key, with the
inputs as positional arguments in the order given. A stage whose output feeds several stages
is a broadcast: the item is stored once and read by each. ``fanout=k`` lets a stage return up
to ``k`` items per input (an iterable: shards, augmentations, a filter that keeps none), keyed
``key.0``, ``key.1``, ...; ``state=`` makes a stage stateful (one call at a time, each given the
state the previous call returned).

Items are keyed by tuples: ``(i,)`` for the ``i``-th source item, one more index after each
fan-out. The inputs of a join must be at the same depth (the same number of fan-outs above
them), or their keys could never match; that is checked here, with every other rule that can
be checked before a run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._resources import DEFAULT_RESOURCES, Resources
from ..retry import RETRY_ATTR, Retry
from .errors import PipelineConfigError

SOURCE = "source"
"""The pseudo-stage of the items given to ``run``: ``inputs=[SOURCE, ...]`` names it."""

Key = tuple[int, ...]


class _NoState:
    def __repr__(self) -> str:
        return "NO_STATE"

    def __reduce__(self) -> str:
        return "NO_STATE"


NO_STATE: Any = _NoState()
"""The ``state`` of a stage that keeps none."""


def key_str(key: Key) -> str:
    """``(3, 1)`` -> ``"3.1"``: how keys appear in stats, errors and store keys."""
    return ".".join(map(str, key))


def parse_key(text: str) -> Key:
    """``"3.1"`` -> ``(3, 1)``."""
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        raise PipelineConfigError(
            f"an item key is dotted integers like '3.1', got {text!r}"
        ) from None


def _concurrency(value: int | tuple[int, int | None], name: str) -> tuple[int, int | None]:
    if isinstance(value, bool):
        raise PipelineConfigError(f"stage {name!r}: concurrency must be an int or (min, max)")
    if isinstance(value, int):
        lo, hi = value, value
    elif isinstance(value, tuple) and len(value) == 2:
        lo, hi = value
    else:
        raise PipelineConfigError(
            f"stage {name!r}: concurrency is an int (fixed) or a (min, max) tuple (max None: "
            f"as many as the executor runs), got {value!r}"
        )
    if (
        not isinstance(lo, int)
        or lo < 0
        or (hi is not None and (not isinstance(hi, int) or hi < 1))
    ):
        raise PipelineConfigError(
            f"stage {name!r}: concurrency needs min >= 0 and max >= 1, got {value!r}"
        )
    if hi is not None and lo > hi:
        raise PipelineConfigError(f"stage {name!r}: concurrency min {lo} > max {hi}")
    return lo, hi


@dataclass(frozen=True)
class Stage:
    """One stage: ``fn`` applied to each item (or each joined tuple of items).

    - ``inputs``: upstream stage names (:data:`SOURCE` for the run's items);
    - ``resources``: what each call needs (CPU cores, GPUs, memory, ``timeout_s``);
    - ``concurrency``: ``(min, max)`` calls in flight for this stage (``max`` None: as many as
      the executor's capacity allows); ``min`` calls get a slot before other stages take more;
    - ``fanout``: the most items one call may return (1: the return value is the item);
    - ``max_in_flight``: the bound on each of this stage's input edges (None: the run's);
    - ``retry``: how failed calls are retried (:class:`hetfaas.Retry`; the stage's function
      must be idempotent: running it twice is harmless); None takes the function's own policy
      when it is declared with ``@hetfaas.idempotent``, else no retries;
    - ``state``: an initial state makes the stage stateful: ``fn(state, *inputs)`` returns
      ``(new_state, output)``, one call at a time, each call given the last call's state.
    """

    fn: Callable[..., Any]
    name: str
    inputs: tuple[str, ...] = (SOURCE,)
    resources: Resources = DEFAULT_RESOURCES
    concurrency: tuple[int, int | None] = (1, None)
    fanout: int = 1
    max_in_flight: int | None = None
    retry: Retry | None = None
    state: Any = field(default=NO_STATE, compare=False)

    @property
    def stateful(self) -> bool:
        return self.state is not NO_STATE

    @property
    def min_workers(self) -> int:
        return self.concurrency[0]

    @property
    def max_workers(self) -> int | None:
        return self.concurrency[1]

    @property
    def policy(self) -> Retry | None:
        """The retry policy of this stage's calls."""
        return self.retry if self.retry is not None else getattr(self.fn, RETRY_ATTR, None)


class Pipeline:
    """A DAG of stages, run on any :class:`hetfaas.Executor`.

    >>> p = Pipeline("demo")
    >>> pre = p.stage(normalise, concurrency=(1, 4))             # doctest: +SKIP
    >>> fit = p.stage(train_step, resources=Resources(gpus=1))   # doctest: +SKIP
    >>> with p.run(range(100)) as run:                           # doctest: +SKIP
    ...     print(run.stats())

    ``stage()`` without ``inputs`` takes the stage added before it (the source for the first),
    so a linear chain is a sequence of ``stage()`` calls, or ``Pipeline.chain(f, g, h)``.
    ``store`` is the data plane the items travel by (``shm://`` on one machine, ``file:///dir``,
    ``redis://host:port/db`` or ``s3://bucket?endpoint=...`` across machines);
    ``max_in_flight`` bounds the items on each edge (None: :func:`default_bound`);
    ``inline_bytes``: an item whose encoding is at most this many bytes, with no large buffer,
    travels inside its reference instead of through the store (0: every item through it).
    """

    def __init__(
        self,
        name: str = "pipeline",
        *,
        store: str = "shm://",
        max_in_flight: int | None = None,
        inline_bytes: int = 1024,
    ) -> None:
        if max_in_flight is not None and (not isinstance(max_in_flight, int) or max_in_flight < 1):
            raise PipelineConfigError(f"max_in_flight must be an int >= 1, got {max_in_flight!r}")
        if not isinstance(inline_bytes, int) or inline_bytes < 0:
            raise PipelineConfigError(f"inline_bytes must be an int >= 0, got {inline_bytes!r}")
        self.name = name
        self.store = store
        self.max_in_flight = max_in_flight
        self.inline_bytes = inline_bytes
        self._stages: dict[str, Stage] = {}
        self._last_stats: Any = None

    @classmethod
    def chain(cls, *fns: Callable[..., Any], **options: Any) -> Pipeline:
        """A linear chain of stages with default options (``options`` go to the Pipeline)."""
        p = cls(**options)
        for fn in fns:
            p.stage(fn)
        return p

    # --------------------------------------------------------------------- building

    def stage(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        inputs: Sequence[str | Stage] | str | Stage | None = None,
        resources: Resources | None = None,
        concurrency: int | tuple[int, int | None] = (1, None),
        fanout: int = 1,
        max_in_flight: int | None = None,
        retry: Retry | None = None,
        state: Any = NO_STATE,
    ) -> Stage:
        """Add a stage (see :class:`Stage` for the options) and return it."""
        if not callable(fn):
            raise PipelineConfigError(f"a stage runs a callable, got {fn!r}")
        name = name or getattr(fn, "__name__", None) or f"stage{len(self._stages)}"
        if name == SOURCE or name in self._stages:
            raise PipelineConfigError(
                f"stage name {name!r} is taken; give each stage its own name= "
                f"(taken: {', '.join([SOURCE, *self._stages])})"
            )
        if inputs is None:
            names: tuple[str, ...] = (list(self._stages)[-1],) if self._stages else (SOURCE,)
        else:
            seq = [inputs] if isinstance(inputs, (str, Stage)) else list(inputs)
            names = tuple(i.name if isinstance(i, Stage) else i for i in seq)
        if not names:
            raise PipelineConfigError(
                f"stage {name!r}: inputs is empty; use [SOURCE] for the run's items"
            )
        for i in names:
            if not isinstance(i, str) or (i != SOURCE and i not in self._stages):
                raise PipelineConfigError(
                    f"stage {name!r}: unknown input {i!r} (inputs are stages added before it, "
                    f"or SOURCE); known: {', '.join([SOURCE, *self._stages])}"
                )
        if len(set(names)) != len(names):
            raise PipelineConfigError(f"stage {name!r}: an input is named twice in {names}")
        if resources is not None and not isinstance(resources, Resources):
            raise PipelineConfigError(f"stage {name!r}: resources must be a hetfaas.Resources")
        if isinstance(fanout, bool) or not isinstance(fanout, int) or fanout < 1:
            raise PipelineConfigError(f"stage {name!r}: fanout must be an int >= 1, got {fanout!r}")
        if max_in_flight is not None and (
            isinstance(max_in_flight, bool)
            or not isinstance(max_in_flight, int)
            or max_in_flight < 1
        ):
            raise PipelineConfigError(f"stage {name!r}: max_in_flight must be an int >= 1")
        if retry is not None and not isinstance(retry, Retry):
            raise PipelineConfigError(f"stage {name!r}: retry must be a hetfaas.Retry")
        conc = _concurrency(concurrency, name)
        if state is not NO_STATE:
            if conc[1] not in (None, 1) or conc[0] > 1:
                raise PipelineConfigError(
                    f"stage {name!r} is stateful (state=...): its calls run one at a time, so "
                    f"its concurrency is 1, not {concurrency!r}"
                )
            conc = (min(conc[0], 1), 1)
        depths = {i: self.depth(i) for i in names}
        if len(set(depths.values())) > 1:
            raise PipelineConfigError(
                f"stage {name!r} joins inputs at different depths {depths} (depth: 1 + the "
                "fan-out stages above): their item keys could never match"
            )
        st = Stage(fn, name, names, resources or DEFAULT_RESOURCES, conc, fanout,
                   max_in_flight, retry, state)  # fmt: skip
        self._stages[name] = st
        return st

    # --------------------------------------------------------------------- reading

    @property
    def stages(self) -> list[Stage]:
        """The stages in the order they were added (a topological order)."""
        return list(self._stages.values())

    def __getitem__(self, name: str) -> Stage:
        return self._stages[name]

    def consumers(self, name: str) -> list[str]:
        """The stages that take ``name``'s items (``name`` may be :data:`SOURCE`)."""
        return [s.name for s in self._stages.values() if name in s.inputs]

    def depth(self, name: str) -> int:
        """The length of the keys of ``name``'s output items."""
        if name == SOURCE:
            return 1
        st = self._stages[name]
        return self.depth(st.inputs[0]) + (1 if st.fanout > 1 else 0)

    def edges(self) -> list[tuple[str, str]]:
        """Every (producer, consumer) pair, in stage order."""
        return [(i, s.name) for s in self._stages.values() for i in s.inputs]

    def sinks(self) -> list[str]:
        """Stages whose items nobody consumes: their outputs are the run's."""
        return [s.name for s in self._stages.values() if not self.consumers(s.name)]

    def levels(self) -> dict[str, int]:
        """Each stage's distance from the source (1 for the stages that read it)."""
        level: dict[str, int] = {SOURCE: 0}
        for s in self._stages.values():
            level[s.name] = 1 + max(level[i] for i in s.inputs)
        return level

    def bound(self, producer: str, consumer: str, default: int | None = None) -> int:
        """The bound on the edge ``producer -> consumer``: the consumer stage's
        ``max_in_flight``, else ``default``, else the pipeline's, else :func:`default_bound`."""
        st = self._stages[consumer]
        fan = 1 if producer == SOURCE else self._stages[producer].fanout
        bound = st.max_in_flight or default or self.max_in_flight
        if bound is None:
            return default_bound(fan, st.max_workers)
        if bound < fan:
            raise PipelineConfigError(
                f"edge {producer} -> {consumer}: max_in_flight {bound} is below {producer!r}'s "
                f"fanout {fan}, so one call's items could not fit"
            )
        return bound

    def stats(self) -> Any:
        """The :class:`~hetfaas.pipeline.stats.PipelineStats` of the last run (None before)."""
        return self._last_stats

    def run(self, source: Any, executor: Any = None, **options: Any) -> Any:
        """Run the pipeline over ``source`` (an iterable) to the end; returns a
        :class:`~hetfaas.pipeline.driver.PipelineRun`. See :func:`hetfaas.pipeline.driver.run` for
        the options."""
        from .driver import run

        return run(self, source, executor, **options)

    def __repr__(self) -> str:
        parts = [f"{s.name}<-{'+'.join(s.inputs)}" for s in self._stages.values()]
        return f"<Pipeline {self.name!r}: {', '.join(parts)}>"


DEFAULT_BOUND = 8  # items per edge: enough to keep a consumer fed across a producer's jitter


def default_bound(producer_fanout: int, consumer_max: int | None) -> int:
    """The bound of an edge when none is given: :data:`DEFAULT_BOUND`, raised so that every
    consumer worker can hold an item while the next ones wait, and one producer call's items
    fit twice over."""
    return max(DEFAULT_BOUND, 2 * producer_fanout, 2 * (consumer_max or 0))


__all__ = [
    "NO_STATE",
    "SOURCE",
    "Key",
    "Pipeline",
    "Stage",
    "default_bound",
    "key_str",
    "parse_key",
]
