import os

import pytest

import hetfaas


@pytest.fixture
def ex():
    """A fresh local pool per test; shut down after, leaving no process behind."""
    executor = hetfaas.Executor()
    yield executor
    executor.shutdown(wait=False, cancel_futures=True)


CORES = len(os.sched_getaffinity(0))
