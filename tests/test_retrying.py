"""Retries on the real local pool: idempotent functions run again after their worker dies,
others never; attempts counted from inside the calls (a log of starts)."""

import time

import pytest

import hetfaas
from hetfaas import Retry

from . import pool_funcs as fx


@pytest.fixture
def log(tmp_path):
    return str(tmp_path / "starts.log")


def runs(log, key):
    try:
        with open(log) as f:
            return f.read().split().count(str(key))
    except FileNotFoundError:
        return 0


@pytest.fixture(scope="module")
def ex():
    with hetfaas.Executor(max_workers=2) as ex:
        yield ex


def test_an_idempotent_call_whose_worker_died_runs_again(ex, log):
    fut = ex.submit(fx.flaky_idempotent, log, "a", 1, 0.2)
    assert fut.result(timeout=60) == "a"
    assert runs(log, "a") == 2 and fut.attempts == 2
    t = fut.timings
    assert t.attempts == 2
    assert t.retry_us >= 200_000  # the first attempt ran 0.2 s before its worker died
    assert t.total_us >= t.retry_us + t.compute_us


def test_a_call_not_declared_idempotent_never_runs_twice(ex, log):
    fut = ex.submit(fx.flaky, log, "b", 1)
    with pytest.raises(hetfaas.WorkerDied):
        fut.result(timeout=60)
    time.sleep(0.3)
    assert runs(log, "b") == 1 and fut.attempts == 1
    with pytest.raises(hetfaas.ConfigurationError, match="not declared idempotent"):
        ex.options(retry=Retry()).submit(fx.flaky, log, "b")
    assert runs(log, "b") == 1  # refused at submit: nothing ran


def test_attempts_end_at_max_attempts_with_the_last_error(ex, log):
    fut = ex.options(retry=Retry(max_attempts=3)).submit(fx.flaky_idempotent, log, "c", 99)
    with pytest.raises(hetfaas.WorkerDied):
        fut.result(timeout=60)
    assert runs(log, "c") == 3 and fut.attempts == 3


def test_the_functions_own_errors_are_not_retried(ex, log):
    fut = ex.submit(fx.flaky_idempotent, log, "d", 0, 0.0, KeyError)
    with pytest.raises(KeyError):
        fut.result(timeout=60)
    assert runs(log, "d") == 1


def test_timeouts_retried_only_when_asked(ex, log):
    timed = ex.options(timeout_s=0.3)
    fut = timed.submit(fx.flaky_idempotent, log, "e", 0, 5.0)
    with pytest.raises(hetfaas.CallTimeout):
        fut.result(timeout=60)
    assert runs(log, "e") == 1
    asked = timed.options(retry=Retry(max_attempts=2, timeouts=True))
    fut = asked.submit(fx.flaky_idempotent, log, "f", 0, 5.0)
    with pytest.raises(hetfaas.CallTimeout):
        fut.result(timeout=60)
    assert runs(log, "f") == 2 and fut.attempts == 2


def test_cancel_stops_the_retries(ex, log):
    slow = ex.options(retry=Retry(max_attempts=5, backoff_s=1.0))
    fut = slow.submit(fx.flaky_idempotent, log, "g", 99)
    deadline = time.monotonic() + 30
    while runs(log, "g") < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # its worker died; the next attempt waits out its backoff
    assert fut.cancel()
    with pytest.raises(hetfaas.CallCancelled):
        fut.result(timeout=10)
    time.sleep(1.5)
    assert runs(log, "g") == 1


def test_a_chunk_of_an_idempotent_map_is_retried(ex, log):
    assert list(ex.map(fx.flaky_items, [log] * 10, range(10), chunksize=5)) == list(range(10))
    assert runs(log, 3) == 2 and runs(log, 7) == 1  # the chunk with item 3 ran twice


def test_a_retry_after_shutdown_ends_with_a_clear_error(log):
    ex = hetfaas.Executor(max_workers=1)
    fut = ex.options(retry=Retry(backoff_s=1.0)).submit(fx.flaky_idempotent, log, "h", 1)
    deadline = time.monotonic() + 30
    while runs(log, "h") < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    ex.shutdown()
    with pytest.raises(hetfaas.ExecutorShutdownError):
        fut.result(timeout=10)
    assert runs(log, "h") == 1


def test_retries_apply_on_other_engines_too(log, tmp_path):
    # the attempts are the executor's, whatever the engine: a Submitit job that dies
    with hetfaas.Executor("submitit-local", folder=str(tmp_path / "jobs")) as ex:
        fut = ex.submit(fx.flaky_idempotent, log, "s", 1)
        assert fut.result(timeout=120) == "s"
        assert runs(log, "s") == 2 and fut.attempts == 2
        plain = ex.submit(fx.flaky, log, "t", 1)
        with pytest.raises((hetfaas.WorkerDied, hetfaas.JobFailed)):
            plain.result(timeout=120)
        assert runs(log, "t") == 1
