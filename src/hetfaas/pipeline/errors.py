"""The errors of pipelines, under :class:`hetfaas.HetfaasError`.

::

    HetfaasError
    ├── ConfigurationError
    │   └── PipelineConfigError    a malformed graph: a cycle, an unknown input, a bound below
    │                              a stage's fan-out, a join of inputs at different depths
    └── PipelineError              a run that could not carry an item to its end
        ├── UpstreamFailed         an item's upstream item failed: it was skipped, never run
        ├── ItemLost               an item's bytes are gone from the data plane
        ├── FanoutExceeded         a stage emitted more items for one input than it declared
        ├── PipelineStalled        nothing runs and nothing can start, yet items remain
        ├── PipelineTimeout        the run went past its timeout_s (also a TimeoutError)
        └── ItemsFailed            raised by ``PipelineRun.check()``: lists what failed where

Stage functions' own exceptions reach the run as they were raised (a failed item's ``error``).
"""

from __future__ import annotations

from ..exceptions import ConfigurationError, HetfaasError


class PipelineConfigError(ConfigurationError):
    """The graph of a pipeline, or an option of a run, is wrong (says what and where)."""


class PipelineError(HetfaasError):
    """A pipeline run could not carry an item to its end."""


class UpstreamFailed(PipelineError):
    """Reading an item whose upstream item failed: it was skipped, never computed."""

    def __init__(self, stage: str, key: str, failed_stage: str, failed_key: str) -> None:
        self.stage, self.key = stage, key
        self.failed_stage, self.failed_key = failed_stage, failed_key
        super().__init__(
            f"item {key} of stage {stage!r} was skipped: its upstream item {failed_key} failed "
            f"at stage {failed_stage!r}"
        )


class ItemLost(PipelineError):
    """An item's bytes are no longer in the data plane (freed, evicted, or the store lost it)."""


class FanoutExceeded(PipelineError):
    """A stage's function returned more items for one input than its ``fanout`` allows."""


class PipelineStalled(PipelineError):
    """Nothing is running and nothing can start, but items remain (joins that never match,
    or bounds too small for the graph); the message describes each stage's state."""


class PipelineTimeout(PipelineError, TimeoutError):
    """The run went past its ``timeout_s``; its calls were cancelled."""


class ItemsFailed(PipelineError):
    """Some items failed (``failures``) and their dependents were skipped (``skipped``)."""

    def __init__(self, message: str, failures: list[object], skipped: list[object]) -> None:
        self.failures = failures
        self.skipped = skipped
        super().__init__(message)


__all__ = [
    "FanoutExceeded",
    "ItemLost",
    "ItemsFailed",
    "PipelineConfigError",
    "PipelineError",
    "PipelineStalled",
    "PipelineTimeout",
    "UpstreamFailed",
]
