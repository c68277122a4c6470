"""The one error tree of hetfaas.

::

    HetfaasError
    ├── ConfigurationError            bad options, unknown backend name
    │   └── UnknownBackendError       names the known backends
    ├── ResourceError                 a Resources request that is malformed or can never fit
    ├── SerializationError            a function, argument or result that cannot be pickled
    ├── CallError                     a call that did not produce its result
    │   ├── RemoteError               the function raised and its exception could not travel back
    │   ├── CallTimeout               the call ran past its timeout_s; its worker was killed
    │   ├── WorkerDied                the worker running the call died (crash, os._exit, OOM kill)
    │   ├── CallCancelled             the call was cancelled or its executor shut down first
    │   └── JobFailed                 an engine's job (Slurm, ...) ended without a result
    │       ├── JobCancelled          cancelled in the engine (scancel)
    │       └── JobTimeout            past the engine's time limit (also a CallTimeout)
    ├── EngineError                   an engine refused a submission (sbatch failed, ...)
    ├── CollectiveError               a communicator operation between functions failed
    │   ├── PeerTimeout               peers did not arrive before the deadline (names them)
    │   ├── GroupMismatch             peers disagree on group, size or operation
    │   ├── PayloadTooLarge           a message over the channel's limit
    │   ├── ChannelUnavailable        the channel's server (Redis, S3, rendezvous) is down
    │   ├── ChannelClosed             a peer's connection closed mid-operation
    │   ├── MembershipChanged         an elastic group re-formed: restore the last commit
    │   ├── GroupTooSmall             fewer than an elastic group's min_size remained
    │   └── GroupEnded                the elastic run ended before this member got in
    ├── ServingError                  an inference request that cannot be served
    │   ├── UnknownModel              a model name that is not registered
    │   ├── ModelTooLarge             a model larger than any device's memory
    │   ├── ModelLoadError            the model's loader raised
    │   └── DeviceFailed              a device failed while running a request
    └── ExecutorShutdownError         submit after shutdown

An exception raised inside a function is re-raised in the caller with its own type when it can
be pickled, with the remote traceback attached as ``__cause__`` (a :class:`RemoteTraceback`).
"""

from __future__ import annotations

import concurrent.futures
from typing import Any


def _rebuild(cls: type, args: tuple[object, ...], state: dict[str, object]) -> BaseException:
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class HetfaasError(Exception):
    """Base of every error hetfaas raises. Each one survives a pickle round trip with its
    message and attributes, whatever its constructor takes (it travels between processes)."""

    def __reduce__(self) -> tuple[object, ...]:
        return _rebuild, (type(self), self.args, dict(self.__dict__))


class ConfigurationError(HetfaasError, ValueError):
    """An option given to an executor or backend is wrong."""


class UnknownBackendError(ConfigurationError):
    """A backend name that is not registered."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = sorted(known)
        super().__init__(f"unknown backend {name!r}; known backends: {', '.join(self.known)}")


class ResourceError(HetfaasError, ValueError):
    """A resource request that is malformed, or that this executor can never satisfy."""


class SerializationError(HetfaasError, TypeError):
    """A function, argument or result that cannot be pickled."""


class CallError(HetfaasError):
    """A call that did not produce its result."""

    def __init__(self, message: str, invocation_id: str | None = None) -> None:
        self.invocation_id = invocation_id
        super().__init__(message)


class RemoteError(CallError):
    """The function raised an exception that could not be pickled back to the caller."""

    def __init__(
        self, type_name: str, message: str, traceback: str, invocation_id: str | None = None
    ) -> None:
        self.type_name = type_name
        self.remote_message = message
        self.remote_traceback = traceback
        super().__init__(f"{type_name}: {message}\n\nRemote traceback:\n{traceback}", invocation_id)


class CallTimeout(CallError, TimeoutError):
    """The call ran longer than its ``timeout_s``; the worker running it was killed."""


class WorkerDied(CallError):
    """The worker process running the call died before returning a result."""

    def __init__(
        self, message: str, invocation_id: str | None = None, exitcode: int | None = None
    ) -> None:
        self.exitcode = exitcode
        super().__init__(message, invocation_id)


class CallCancelled(CallError, concurrent.futures.CancelledError):
    """The call was cancelled before it ran."""


class JobFailed(CallError):
    """An engine's job ended without a result; carries its id, state and stderr tail."""

    def __init__(
        self,
        message: str,
        invocation_id: str | None = None,
        job_id: str = "",
        state: str = "",
        stderr_tail: str = "",
    ) -> None:
        self.job_id = job_id
        self.state = state
        self.stderr_tail = stderr_tail
        if stderr_tail:
            message = f"{message}\n--- stderr (tail) ---\n{stderr_tail}"
        super().__init__(message, invocation_id)


class JobCancelled(JobFailed):
    """The engine cancelled the job (``scancel``, preemption without requeue)."""


class JobTimeout(JobFailed, CallTimeout):
    """The job ran past the engine's time limit."""


class EngineError(HetfaasError, RuntimeError):
    """An engine refused a submission or cannot be reached."""


class ExecutorShutdownError(HetfaasError, RuntimeError):
    """The executor was shut down; it accepts no more calls."""


class CollectiveError(HetfaasError):
    """A communicator operation between running functions failed."""


class PeerTimeout(CollectiveError, TimeoutError):
    """Peers did not take part before the deadline; ``missing`` lists their ranks."""

    def __init__(self, message: str, missing: list[int] | tuple[int, ...] = ()) -> None:
        self.missing = sorted(missing)
        if self.missing:
            message = f"{message} (missing ranks: {', '.join(map(str, self.missing))})"
        super().__init__(message)


class GroupMismatch(CollectiveError, ValueError):
    """Peers disagree on the group's name, size, or the operation being run."""


class PayloadTooLarge(CollectiveError, ValueError):
    """A message larger than the channel accepts."""


class ChannelUnavailable(CollectiveError, ConnectionError):
    """The channel's server (Redis, S3, the rendezvous server) cannot be reached."""


class ChannelClosed(CollectiveError, ConnectionError):
    """A peer's connection closed in the middle of an operation."""


class MembershipChanged(CollectiveError):
    """An elastic group re-formed after a member was lost, and this member's state is older or
    newer than the commit the new group goes on from: call ``comm.restore()`` (``run`` does).
    ``reformation``: the :class:`hetfaas.collectives.elastic.Reformation` it came from."""

    def __init__(self, message: str, reformation: Any = None) -> None:
        self.reformation = reformation
        super().__init__(message)


class GroupTooSmall(CollectiveError):
    """Fewer than an elastic group's ``min_size`` members remained within ``form_timeout_s``."""


class GroupEnded(CollectiveError):
    """The elastic run ended while this member waited to be taken in."""


class ServingError(HetfaasError):
    """An inference request that cannot be served."""


class UnknownModel(ServingError, KeyError):
    """A model name that no inference function registered."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ModelTooLarge(ServingError, ValueError):
    """A model larger than the memory of every device."""


class ModelLoadError(ServingError):
    """The model's loader raised; the original error is ``__cause__``."""


class DeviceFailed(ServingError):
    """A device failed while it ran a request."""


class RemoteTraceback(Exception):
    """Carries the text of a traceback raised in a worker; set as ``__cause__``."""

    def __init__(self, tb: str) -> None:
        self.tb = tb
        super().__init__(tb)

    def __str__(self) -> str:
        return f'\n\nRemote traceback:\n"""\n{self.tb}"""'


__all__ = [
    "CallCancelled",
    "CallError",
    "CallTimeout",
    "ChannelClosed",
    "ChannelUnavailable",
    "CollectiveError",
    "ConfigurationError",
    "DeviceFailed",
    "EngineError",
    "ExecutorShutdownError",
    "GroupEnded",
    "GroupMismatch",
    "GroupTooSmall",
    "HetfaasError",
    "JobCancelled",
    "JobFailed",
    "JobTimeout",
    "MembershipChanged",
    "ModelLoadError",
    "ModelTooLarge",
    "PayloadTooLarge",
    "PeerTimeout",
    "RemoteError",
    "RemoteTraceback",
    "ResourceError",
    "SerializationError",
    "ServingError",
    "UnknownBackendError",
    "UnknownModel",
    "WorkerDied",
]
