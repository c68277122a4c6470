"""Remote exceptions: the three forms, and every hetfaas exception across a pickle."""

import inspect
import pickle

import pytest

import hetfaas
from hetfaas import exceptions
from hetfaas.backends import errors

from .. import pool_funcs as fx


def _raised(fn, *args):
    try:
        fn(*args)
    except BaseException as exc:
        return exc
    raise AssertionError("did not raise")


def test_plain_exception_travels_as_itself():
    exc = errors.decode(errors.encode(_raised(fx.boom, "x")))
    assert type(exc) is ValueError and str(exc) == "x"
    assert "boom" in exc.__cause__.tb


def test_constructor_with_other_arguments_is_rebuilt():
    original = _raised(fx.raise_pair, 7, "step 3")
    with pytest.raises(TypeError):  # what plain pickling does with it
        pickle.loads(pickle.dumps(original))
    exc = errors.decode(errors.encode(original))
    assert isinstance(exc, fx.PairError)
    assert (exc.code, exc.where, str(exc)) == (7, "step 3", "code 7 at step 3")
    assert isinstance(exc.__cause__, hetfaas.RemoteTraceback)
    assert "raise_pair" in exc.__cause__.tb


def test_unpicklable_exception_becomes_remote_error_with_its_name():
    exc = errors.decode(errors.encode(_raised(fx.boom_unpicklable)), "call-1")
    assert isinstance(exc, hetfaas.RemoteError)
    assert exc.type_name == "tests.pool_funcs.Unpicklable"
    assert exc.remote_message == "cannot travel"
    assert "boom_unpicklable" in exc.remote_traceback
    assert exc.invocation_id == "call-1"


def test_base_exceptions_travel_as_text():
    exc = errors.decode(errors.encode(_raised(lambda: (_ for _ in ()).throw(SystemExit(3)))))
    assert isinstance(exc, hetfaas.RemoteError) and exc.type_name == "SystemExit"


def test_caller_that_cannot_unpickle_gets_the_text():
    data = pickle.dumps((errors.AS_IS, b"not a pickle", "pkg.Gone", "it broke", "tb text"))
    exc = errors.decode(data)
    assert isinstance(exc, hetfaas.RemoteError)
    assert exc.type_name == "pkg.Gone" and exc.remote_message == "it broke"


def _sample(cls):
    """An instance of ``cls`` made with arguments of the kinds its constructor names."""
    kinds = {"known": ["a", "b"], "missing": [1, 2], "exitcode": -9}
    args = []
    try:
        params = inspect.signature(cls).parameters
    except ValueError:  # the constructor of Exception itself: a message
        return cls("what went wrong")
    for name, p in params.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is not p.empty and name not in kinds:
            continue
        args.append(kinds.get(name, f"{name}-value"))
    return cls(*args)


ALL = [getattr(exceptions, n) for n in exceptions.__all__]


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_every_hetfaas_exception_round_trips(cls):
    exc = _sample(cls)
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is cls
    assert str(back) == str(exc)
    assert back.__dict__ == exc.__dict__


def test_remote_error_keeps_its_fields_across_pickle():
    exc = hetfaas.RemoteError("pkg.E", "msg", "tb", "iid-3")
    back = pickle.loads(pickle.dumps(exc))
    assert (back.type_name, back.remote_message, back.remote_traceback, back.invocation_id) == (
        "pkg.E",
        "msg",
        "tb",
        "iid-3",
    )


def test_custom_exception_reaches_the_caller_through_the_pool(ex):
    fut = ex.submit(fx.raise_pair, 4, "here")
    with pytest.raises(fx.PairError, match="code 4 at here") as info:
        fut.result(timeout=60)
    assert info.value.code == 4
    assert "raise_pair" in info.value.__cause__.tb
