"""hetfaas: Python functions as serverless calls on CPUs and GPUs, measured against bare metal."""

from ._baseline import bare_metal
from ._executor import Executor
from ._future import Future
from ._invocation import State, Timings
from ._resources import Resources
from .backends import register as register_backend
from .backends.base import Backend, Capacity
from .exceptions import (
    CallCancelled,
    CallError,
    CallTimeout,
    ChannelClosed,
    ChannelUnavailable,
    CollectiveError,
    ConfigurationError,
    DeviceFailed,
    EngineError,
    ExecutorShutdownError,
    GroupEnded,
    GroupMismatch,
    GroupTooSmall,
    HetfaasError,
    JobCancelled,
    JobFailed,
    JobTimeout,
    MembershipChanged,
    ModelLoadError,
    ModelTooLarge,
    PayloadTooLarge,
    PeerTimeout,
    RemoteError,
    RemoteTraceback,
    ResourceError,
    SerializationError,
    ServingError,
    UnknownBackendError,
    UnknownModel,
    WorkerDied,
)
from .pipeline.graph import Pipeline
from .retry import Retry, idempotent
from .shm import share, shared_array, shared_tensor

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "CallCancelled",
    "CallError",
    "CallTimeout",
    "Capacity",
    "ChannelClosed",
    "ChannelUnavailable",
    "CollectiveError",
    "ConfigurationError",
    "DeviceFailed",
    "EngineError",
    "Executor",
    "ExecutorShutdownError",
    "Future",
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
    "Pipeline",
    "RemoteError",
    "RemoteTraceback",
    "ResourceError",
    "Resources",
    "Retry",
    "SerializationError",
    "ServingError",
    "State",
    "Timings",
    "UnknownBackendError",
    "UnknownModel",
    "WorkerDied",
    "__version__",
    "advise",
    "bare_metal",
    "idempotent",
    "register_backend",
    "share",
    "shared_array",
    "shared_tensor",
]

# imported when first used: hetfaas.monitor, ...
_SUBMODULES = ("client", "gateway", "metrics", "monitor", "submitit")


def __getattr__(name: str) -> object:
    if name == "advise":  # the device advisor (hetfaas.advisor), imported when first used
        from .advisor import advise

        return advise
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
