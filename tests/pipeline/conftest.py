"""Fixtures of the pipeline tests: one real local pool per module, and the real Redis and S3
servers of the collectives tests (started on free ports, stopped at the end)."""

from __future__ import annotations

import os

import pytest

import hetfaas
from hetfaas.shm import SHM_DIR
from tests.collectives.conftest import S3_KEYS, redis_server, s3_server  # noqa: F401


@pytest.fixture(scope="module")
def pool():
    """A warm local pool shared by a module's tests (each test runs its own pipeline)."""
    ex = hetfaas.Executor()
    ex.warmup()
    yield ex
    ex.shutdown(wait=False, cancel_futures=True)


def shm_items(namespace: str) -> list[str]:
    """The shared-memory files of a run's namespace that exist now."""
    return [n for n in os.listdir(SHM_DIR) if n.startswith(f"hetfaas-{namespace}")]


@pytest.fixture
def s3_url(s3_server):  # noqa: F811
    keys = S3_KEYS
    return (f"s3://hetfaas-pipeline-test?endpoint={s3_server}"
            f"&access_key_id={keys['AWS_ACCESS_KEY_ID']}"
            f"&secret_access_key={keys['AWS_SECRET_ACCESS_KEY']}")  # fmt: skip
