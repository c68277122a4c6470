"""The retry policy as a pure function, and how functions are declared idempotent."""

import pickle

import pytest

import hetfaas
from hetfaas import Retry
from hetfaas.exceptions import (
    CallCancelled,
    CallTimeout,
    JobCancelled,
    JobFailed,
    JobTimeout,
    RemoteError,
    WorkerDied,
)
from hetfaas.retry import Idempotent, policy_of


def test_which_errors_are_retried():
    p = Retry()
    assert p.retries(WorkerDied("x")) and p.retries(JobFailed("x"))
    assert p.retries(JobCancelled("x"))  # cancelled or preempted by the engine
    assert not p.retries(CallCancelled("x"))  # the caller's own cancel
    assert not p.retries(CallTimeout("x")) and not p.retries(JobTimeout("x"))
    assert Retry(timeouts=True).retries(CallTimeout("x"))
    assert Retry(timeouts=True).retries(JobTimeout("x"))
    assert not p.retries(ValueError("the function's own error"))
    assert not p.retries(RemoteError("KeyError", "x", "tb"))


def test_attempts_and_backoff():
    p = Retry(max_attempts=4, backoff_s=0.1, backoff_factor=3, max_backoff_s=0.5, jitter=0.5)
    err = WorkerDied("x")
    delays = [p.delay(a, err, rand=lambda: 0.0) for a in (1, 2, 3, 4)]
    assert delays[:3] == pytest.approx([0.1, 0.3, 0.5]) and delays[3] is None
    assert p.delay(1, err, rand=lambda: 1.0) == pytest.approx(0.15)  # jitter up to 50%
    assert p.delay(1, ValueError("x")) is None
    assert Retry(max_attempts=1).delay(1, err) is None  # one attempt: never again
    assert Retry().delay(3, err) == 0.0 and Retry().delay(4, err) is None  # 4 by default


def test_bad_policies_are_refused():
    for bad in (
        {"max_attempts": 0},
        {"max_attempts": 2.5},
        {"backoff_s": -1},
        {"backoff_factor": 0.5},
        {"jitter": 2},
        {"on": ()},
        {"on": (int,)},
    ):
        with pytest.raises(hetfaas.ConfigurationError):
            Retry(**bad)


def _plain(x):
    return x


@hetfaas.idempotent
def _declared(x):
    return x


@hetfaas.idempotent(Retry(max_attempts=7))
def _declared_with(x):
    return x


def test_declaring_functions_idempotent():
    assert policy_of(_plain, None) is None  # never retried unless declared
    assert policy_of(_declared, None) == Retry()
    assert policy_of(_declared_with, None).max_attempts == 7
    assert policy_of(_declared, Retry(max_attempts=2)).max_attempts == 2  # options(retry=)
    with pytest.raises(hetfaas.ConfigurationError, match="not declared idempotent"):
        policy_of(_plain, Retry())
    wrapped = hetfaas.idempotent(len)  # a builtin takes no attribute: wrapped
    assert isinstance(wrapped, Idempotent) and wrapped([1, 2]) == 2
    again = pickle.loads(pickle.dumps(wrapped))
    assert again("abc") == 3 and policy_of(again, None) == Retry()
    with pytest.raises(TypeError):
        hetfaas.idempotent(5)
