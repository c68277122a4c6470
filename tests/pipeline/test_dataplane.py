"""One contract for every data plane store, each against the real thing: shared memory, a
directory, a redis-server and a SeaweedFS S3 server started by the fixtures."""

from __future__ import annotations

import pickle
import uuid

import numpy as np
import pytest

from hetfaas.pipeline import ItemLost, ItemStore, PipelineConfigError, dataplane

from .conftest import shm_items


@pytest.fixture(params=["shm", "file", "redis", "s3"])
def store_url(request, tmp_path):
    if request.param == "shm":
        return "shm://"
    if request.param == "file":
        return f"file://{tmp_path / 'items'}"
    if request.param == "redis":
        return request.getfixturevalue("redis_server")
    return request.getfixturevalue("s3_url")


def test_round_trip_delete_and_clear(store_url):
    ns = f"t{uuid.uuid4().hex[:8]}"
    arr = np.arange(100_000, dtype=np.float32)
    ref = dataplane.put_value(store_url, f"{ns}-0-1", {"x": arr, "tag": "a"}, inline_bytes=1024)
    assert ref.inline is None and ref.key == f"{ns}-0-1" and ref.nbytes > arr.nbytes
    assert len(pickle.dumps(ref)) < 600  # what the driver holds: a reference, not the bytes
    got = dataplane.get_value(ref)
    assert got["tag"] == "a" and np.array_equal(got["x"], arr)
    # a reader may write into what it got; a second reader still sees the item as stored
    got["x"][:] = -1
    assert np.array_equal(dataplane.get_value(ref)["x"], arr)
    # a second put under the same key (a retried call) replaces the item
    ref2 = dataplane.put_value(store_url, f"{ns}-0-1", {"x": arr[:10], "tag": "b"})
    assert dataplane.get_value(ref2)["tag"] == "b"
    other = dataplane.put_value(store_url, f"{ns}x-0-2", arr)
    store = dataplane.open_store(store_url)
    store.delete([ref.key, "never-written"])
    with pytest.raises(ItemLost):
        dataplane.get_value(ref)
    keep = dataplane.put_value(store_url, f"{ns}-0-3", arr)
    store.clear(f"{ns}-")
    with pytest.raises(ItemLost):
        dataplane.get_value(keep)
    assert np.array_equal(dataplane.get_value(other), arr)  # another namespace is untouched
    store.clear(f"{ns}x-")
    with pytest.raises(ItemLost):
        dataplane.get_value(other)


def test_small_items_travel_inline():
    ref = dataplane.put_value("shm://", "never-stored", (1, "two"), inline_bytes=1024)
    assert ref.inline is not None and ref.key == ""
    assert dataplane.get_value(ref) == (1, "two")
    big = dataplane.put_value("shm://", "big-inline-check", np.zeros(20_000), inline_bytes=1 << 30)
    assert big.inline is None  # arrays with out-of-band buffers are always stored
    dataplane.open_store("shm://").delete([big.key])


def test_shm_reads_map_the_item_without_copying():
    ns = f"{uuid.uuid4().hex[:8]}"
    ref = dataplane.put_value("shm://", f"{ns}-0-0", np.ones(1_000_000, dtype=np.float64))
    assert shm_items(ns) == [f"hetfaas-{ns}-0-0"]
    a = dataplane.get_value(ref)
    b = dataplane.get_value(ref)
    assert not np.shares_memory(a, b)  # private mappings
    assert a.flags.writeable
    a[:] = 7  # copy-on-write: only the pages written are copied
    assert b[0] == 1.0 and b.sum() == 1_000_000
    dataplane.open_store("shm://").clear(ns)
    assert shm_items(ns) == []
    assert a[0] == 7  # a mapping outlives the unlinked file


def test_registry_is_checked_and_names_the_known_schemes():
    with pytest.raises(PipelineConfigError, match="known: file, redis, s3, shm"):
        dataplane.check_url("nope://x")
    with pytest.raises(PipelineConfigError, match="a data plane is a URL"):
        dataplane.check_url("shm")
    with pytest.raises(PipelineConfigError, match="no host or path"):
        dataplane.ShmStore.from_url("shm://host/dir")

    class Half(ItemStore):
        scheme = "half"

        @classmethod
        def from_url(cls, url):
            return cls()

    with pytest.raises(PipelineConfigError, match="does not implement clear, delete, get, put"):
        dataplane.register_store(Half)
    with pytest.raises(PipelineConfigError, match="ItemStore subclass"):
        dataplane.register_store(dict)
    with pytest.raises(PipelineConfigError, match=r"\[A-Za-z0-9._-\]"):
        dataplane.put_value("shm://", "../escape", np.zeros(100_000))


def test_a_store_that_is_down_says_so(tmp_path):
    from hetfaas.exceptions import ChannelUnavailable

    from ..collectives.conftest import free_port

    with pytest.raises(ChannelUnavailable, match="not reachable"):
        dataplane.open_store(f"redis://127.0.0.1:{free_port()}/0")
