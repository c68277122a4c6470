"""Pipelines: DAGs of stages with their own resources, items passed by reference.

::

    import hetfaas
    from hetfaas.pipeline import Pipeline

    p = Pipeline("features", store="shm://", max_in_flight=4)
    p.stage(load, concurrency=(1, 4))                            # CPU, up to 4 calls at once
    p.stage(embed, resources=hetfaas.Resources(gpus=1), concurrency=1)
    with hetfaas.Executor() as ex, p.run(range(100), ex) as run:
        print(run.stats())                                       # per stage, edges, critical path
        run.stats().plot_timeline("timeline.png")

See :mod:`.graph` (stages, joins, fan-out, broadcast, state), :mod:`.flow` (backpressure and
scheduling decisions, pure), :mod:`.dataplane` (``shm://``, ``file://``, ``redis://``,
``s3://``), :mod:`.driver` (the driver loop) and :mod:`.stats`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .dataplane import ItemRef, ItemStore, known_schemes, open_store, register_store
    from .driver import PipelineRun, run
    from .errors import (
        FanoutExceeded,
        ItemLost,
        ItemsFailed,
        PipelineConfigError,
        PipelineError,
        PipelineStalled,
        PipelineTimeout,
        UpstreamFailed,
    )
    from .flow import Budget, Failure, Skipped
    from .graph import NO_STATE, SOURCE, Pipeline, Stage
    from .stats import EdgeStats, PipelineStats, StageStats, TaskRecord

# Names are loaded from their modules when first used: a worker that runs a stage imports only
# what a call needs (worker, dataplane), not the driver's loop and stats.
_WHERE = {
    "ItemRef": "dataplane", "ItemStore": "dataplane", "known_schemes": "dataplane",
    "open_store": "dataplane", "register_store": "dataplane",
    "FanoutExceeded": "errors", "ItemLost": "errors", "ItemsFailed": "errors",
    "PipelineConfigError": "errors", "PipelineError": "errors", "PipelineStalled": "errors",
    "PipelineTimeout": "errors", "UpstreamFailed": "errors",
    "Budget": "flow", "Failure": "flow", "Skipped": "flow",
    "NO_STATE": "graph", "SOURCE": "graph", "Pipeline": "graph", "Stage": "graph",
    "PipelineRun": "driver", "run": "driver",
    "EdgeStats": "stats", "PipelineStats": "stats", "StageStats": "stats", "TaskRecord": "stats",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{where}"), name)
    globals()[name] = value
    return value


__all__ = [
    "NO_STATE",
    "SOURCE",
    "Budget",
    "EdgeStats",
    "Failure",
    "FanoutExceeded",
    "ItemLost",
    "ItemRef",
    "ItemStore",
    "ItemsFailed",
    "Pipeline",
    "PipelineConfigError",
    "PipelineError",
    "PipelineRun",
    "PipelineStalled",
    "PipelineStats",
    "PipelineTimeout",
    "Skipped",
    "Stage",
    "StageStats",
    "TaskRecord",
    "UpstreamFailed",
    "known_schemes",
    "open_store",
    "register_store",
    "run",
]
