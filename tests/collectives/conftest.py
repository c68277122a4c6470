"""Channels for the contract suite, each against the real thing: a shared directory, the
rendezvous server for TCP, a redis-server and a SeaweedFS S3 server started here on free
ports (state and logs in a temporary directory; killed at the end of the session)."""

from __future__ import annotations

import threading
import uuid

import pytest

from hetfaas.collectives import Communicator
from hetfaas.collectives.channels.rendezvous import RendezvousServer


def run_ranks(uri, size, body, *, timeout_s=20.0, group=None, setup=None):
    """Run ``body(comm)`` on ``size`` ranks (threads), each with its own channel; the results
    in rank order. The first exception of any rank is raised."""
    group = group or f"g-{uuid.uuid4().hex[:12]}"
    results: list = [None] * size
    errors: list = [None] * size

    def rank_main(rank):
        try:
            with Communicator(rank, size, group, channel=uri, timeout_s=timeout_s) as comm:
                if setup is not None:
                    setup(comm)
                results[rank] = body(comm)
        except BaseException as exc:  # handed to the test thread
            errors[rank] = exc

    threads = [threading.Thread(target=rank_main, args=(r,), daemon=True) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s * 4 + 10)
    assert not any(t.is_alive() for t in threads), "a rank hung past its deadline"
    for exc in errors:
        if exc is not None:
            raise exc
    return results


@pytest.fixture
def file_uri(tmp_path):
    return f"file://{tmp_path / 'store'}"


@pytest.fixture(scope="session")
def rendezvous():
    with RendezvousServer("127.0.0.1", 0) as server:
        yield server


@pytest.fixture
def tcp_uri(rendezvous):
    return rendezvous.uri


CHANNELS = ["file", "tcp"]


@pytest.fixture(params=CHANNELS)
def channel_uri(request):
    """A URI of every channel kind in turn (one contract for all)."""
    return request.getfixturevalue(f"{request.param}_uri")
