"""The public surface: every name in __all__ exists, and the error tree holds."""

import concurrent.futures as cf

import pytest

import hetfaas
from hetfaas import exceptions

from . import pool_funcs as fx


def test_all_names_exist():
    for name in hetfaas.__all__:
        assert hasattr(hetfaas, name), name
    assert set(exceptions.__all__) <= set(hetfaas.__all__)


def test_error_tree():
    for name in exceptions.__all__:
        cls = getattr(exceptions, name)
        if name != "RemoteTraceback":
            assert issubclass(cls, hetfaas.HetfaasError), name
    assert issubclass(hetfaas.CallTimeout, TimeoutError)
    assert issubclass(hetfaas.CallCancelled, cf.CancelledError)
    assert issubclass(hetfaas.ResourceError, ValueError)


def test_map_timeout_bounds_the_whole_map(ex):
    with pytest.raises(TimeoutError):
        list(ex.map(fx.sleepy, [0.4, 0.4, 0.4, 0.4], timeout=0.5))


def test_unknown_backend_option_is_named():
    with pytest.raises(hetfaas.ConfigurationError, match=r"max_worker.*max_workers"):
        hetfaas.Executor(max_worker=2)
    with pytest.raises(hetfaas.ConfigurationError, match="spin_us"):
        hetfaas.Executor(spin_us=-1)


def test_submodules_are_reached_from_the_package():
    import hetfaas

    assert hetfaas.monitor.Sampler and hetfaas.submitit.AutoExecutor and hetfaas.metrics
    assert hetfaas.client.Client and hetfaas.gateway.create_app
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        hetfaas.nope  # noqa: B018
