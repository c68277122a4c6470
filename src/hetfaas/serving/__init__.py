"""Inference functions on GPUs: a model cache per device and locality-aware scheduling.

Pure decision code (``cache``, ``state``, ``policies``, ``scheduler``) is driven by two modes:
``simulator`` (a discrete-event simulation over ``catalog`` and ``workload``) and ``runtime``
(real torch models on GPUs, or on CPU "devices" with memory budgets). ``functions`` makes an
inference function callable from any ``Executor``.
"""

from .cache import ModelCache
from .catalog import Catalog, ModelProfile, default_catalog
from .functions import InferenceFunction, save_weights
from .policies import POLICIES, Policy, PolicyParams, dispatch_rule, get_policy, pick_rule
from .runtime import GPUManager, RequestRecord, Runtime
from .scheduler import Scheduler
from .simulator import Cluster, SimResult, simulate
from .state import SchedulerState
from .workload import Trace, make_trace

__all__ = [
    "POLICIES",
    "Catalog",
    "Cluster",
    "GPUManager",
    "InferenceFunction",
    "ModelCache",
    "ModelProfile",
    "Policy",
    "PolicyParams",
    "RequestRecord",
    "Runtime",
    "Scheduler",
    "SchedulerState",
    "SimResult",
    "Trace",
    "default_catalog",
    "dispatch_rule",
    "get_policy",
    "make_trace",
    "pick_rule",
    "save_weights",
    "simulate",
]
