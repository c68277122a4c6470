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
    ConfigurationError,
    EngineError,
    ExecutorShutdownError,
    HetfaasError,
    JobCancelled,
    JobFailed,
    JobTimeout,
    RemoteError,
    RemoteTraceback,
    ResourceError,
    SerializationError,
    UnknownBackendError,
    WorkerDied,
)
from .shm import share, shared_array, shared_tensor

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "CallCancelled",
    "CallError",
    "CallTimeout",
    "Capacity",
    "ConfigurationError",
    "EngineError",
    "Executor",
    "ExecutorShutdownError",
    "Future",
    "HetfaasError",
    "JobCancelled",
    "JobFailed",
    "JobTimeout",
    "RemoteError",
    "RemoteTraceback",
    "ResourceError",
    "Resources",
    "SerializationError",
    "State",
    "Timings",
    "UnknownBackendError",
    "WorkerDied",
    "__version__",
    "bare_metal",
    "register_backend",
    "share",
    "shared_array",
    "shared_tensor",
]
