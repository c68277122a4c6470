"""Pickling of calls: functions by digest, large buffers out of band."""

import pickle
import threading

import numpy as np
import pytest
import torch

from hetfaas import serialize, shm
from hetfaas.exceptions import SerializationError


def test_function_pickled_once_and_named_by_digest():
    def local(x):
        return x + 1

    d1, p1 = serialize.dump_function(local)
    d2, p2 = serialize.dump_function(local)
    assert d1 == d2 and p1 is p2
    assert serialize.load_function(p1)(1) == 2
    d3, _ = serialize.dump_function(lambda x: x)
    assert d3 != d1


def test_large_buffers_go_to_shared_memory_and_come_back():
    pool, cache = shm.SegmentPool("t"), shm.AttachCache()
    try:
        t = torch.arange(1_000_000, dtype=torch.float32).reshape(1000, 1000)
        a = np.arange(100_000, dtype=np.int64)
        small = np.arange(10)
        sink = serialize.BufferSink(pool)
        data = serialize.dumps((t, a, small), sink)
        assert len(sink.descs) == 2 and len(data) < 10_000  # small stays in band
        t2, a2, s2 = serialize.loads(data, sink.descs, cache)
        assert torch.equal(t2, t) and np.array_equal(a2, a) and np.array_equal(s2, small)
        t[0, 0] = -1
        assert t2[0, 0] == 0  # a copy was taken at submit: later changes do not leak in
    finally:
        pool.close()


def test_tensor_kinds_survive():
    pool, cache = shm.SegmentPool("t"), shm.AttachCache()
    try:
        cases = [
            torch.randn(300, 300).t(),  # not contiguous
            torch.randn(200, 200, dtype=torch.bfloat16),
            torch.randn(100, 100, dtype=torch.complex64).conj(),
            torch.randn(200, 200, requires_grad=True),
            torch.tensor(3.5),
            torch.empty(0, 5),
        ]
        for t in cases:
            sink = serialize.BufferSink(pool)
            back = serialize.loads(serialize.dumps(t, sink), sink.descs, cache)
            assert back.dtype == t.dtype and back.shape == t.shape
            assert torch.equal(back.detach(), t.detach().resolve_conj())
            assert back.requires_grad == t.requires_grad
    finally:
        pool.close()


def test_unpicklable_names_the_culprit():
    sink = serialize.BufferSink(None)
    with pytest.raises(SerializationError, match="keyword argument 'k'"):
        serialize.dumps_call_args("f", (1,), {"k": threading.Lock()}, sink)
    with pytest.raises(SerializationError, match=r"argument 1 \(lock\) of f"):
        serialize.dumps_call_args("f", (1, threading.Lock()), {})  # in band, as shipped
    with pytest.raises(SerializationError, match="function"):
        lock = threading.Lock()
        serialize.dump_function(lambda: lock)


class _Name(str):
    pass


def test_plain_values_are_told_apart_from_what_needs_cloudpickle():
    for v in (1, 2.5, "s", b"b", True, None, (), (1, "a", None), ((1, 2), b"x", (3.0,)),
              tuple(range(32))):  # fmt: skip
        assert serialize.plain(v), v
    for v in ([1], {"a": 1}, (1, [2]), ((1, (2,)),), tuple(range(33)), ((0,) * 33,),
              _Name("x"), (_Name("x"),), np.float64(1.0), (lambda: 1), (print,)):  # fmt: skip
        assert not serialize.plain(v), v


def test_plain_arguments_and_the_rest_come_back_the_same():
    sink = serialize.BufferSink(None)
    f = lambda x: x + 1  # noqa: E731  (cloudpickle pickles it by value)
    for args, kwargs in [((1, "a", (2, b"b")), {}), ((f,), {}), ((1,), {"k": (1, 2)})]:
        data = serialize.dumps_call_args("fn", args, kwargs, sink)
        back_args, back_kwargs = serialize.loads(data, sink.descs, None)
        assert back_kwargs == kwargs
        assert back_args[0](1) == 2 if args[0] is f else back_args == args
    arr = np.arange(100_000.0)  # with no sink its buffer stays in band
    back_args, _ = pickle.loads(serialize.dumps_call_args("fn", (arr,), {}))
    assert np.array_equal(back_args[0], arr)
