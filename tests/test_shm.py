"""Shared-memory segments, pools and the zero-copy registry."""

import gc
import os

import numpy as np

from hetfaas import shm


def test_size_classes_and_reuse():
    pool = shm.SegmentPool("t")
    try:
        a = pool.lease(3_000_000)
        assert a.size == shm.size_class(3_000_000) == 4 << 20
        pool.release(a)
        b = pool.lease(2_500_000)
        assert b is a  # warm pages reused, not a fresh segment
        c = pool.lease(100)
        assert c is not a and c.size == shm.MIN_SEGMENT
    finally:
        pool.close()
    assert not os.path.exists(os.path.join(shm.SHM_DIR, a.name))


def test_idle_bytes_are_capped():
    pool = shm.SegmentPool("t", max_idle_bytes=3 << 20)
    try:
        segs = [pool.lease(1 << 20) for _ in range(4)]
        for s in segs:
            pool.release(s)
        assert len(pool.names) == 3
    finally:
        pool.close()


def test_shared_array_is_found_by_address_and_freed():
    arr = shm.shared_array((1000, 10), np.float64)
    addr = arr.ctypes.data
    found = shm.REGISTRY.find(addr + 80, 800)
    assert found is not None and found[1] == 80
    name = found[0]
    view = arr[10:20]
    del arr
    gc.collect()
    assert shm.REGISTRY.find(addr, 8) is not None  # a view still holds it
    del view
    gc.collect()
    assert shm.REGISTRY.find(addr, 8) is None
    assert not os.path.exists(os.path.join(shm.SHM_DIR, name))


def test_sweep_orphans_removes_segments_of_dead_processes():
    name = f"{shm.PREFIX}999999999-x-0"
    open(os.path.join(shm.SHM_DIR, name), "wb").close()
    mine = shm.Segment.create(shm.segment_name("x"), 4096)
    try:
        shm.sweep_orphans()
        assert not os.path.exists(os.path.join(shm.SHM_DIR, name))
        assert os.path.exists(os.path.join(shm.SHM_DIR, mine.name))
    finally:
        mine.unlink()
