"""Reduction ops and message frames, without any channel."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from hetfaas import ConfigurationError, GroupMismatch
from hetfaas.collectives import MAX, MIN, PROD, SUM, ReduceOp
from hetfaas.collectives.ops import as_op, fold
from hetfaas.collectives.payload import decode, encode, join

torch = pytest.importorskip("torch")


def test_builtins_on_every_payload_kind():
    assert SUM(2, 3) == 5 and PROD(2.0, 3) == 6.0 and MAX(1, 4) == 4 and MIN(1, 4) == 1
    assert SUM([1, [2, 3]], [10, [20, 30]]) == [11, [22, 33]]
    np.testing.assert_array_equal(MAX(np.array([1, 5]), np.array([3, 2])), [3, 5])
    assert torch.equal(MIN(torch.tensor([1, 5]), torch.tensor([3, 2])), torch.tensor([1, 2]))
    with pytest.raises(GroupMismatch, match="different lengths"):
        SUM([1, 2], [1])
    with pytest.raises(GroupMismatch, match="different shapes"):
        SUM(np.ones(2), np.ones(3))


def test_custom_ops_and_names():
    assert not as_op(lambda a, b: a).reorderable
    assert as_op("max") is MAX
    assert ReduceOp(max, True, True).reorderable
    assert fold(as_op(lambda a, b: a + b), ["0", "1", "2"]) == "012"
    assert pickle.loads(pickle.dumps(SUM)) is SUM
    with pytest.raises(ConfigurationError, match="unknown reduction 'avg'"):
        as_op("avg")
    with pytest.raises(ConfigurationError, match="callable"):
        ReduceOp(3)


def test_frames_carry_buffers_out_of_band_and_decode_as_views():
    arr = np.arange(1000, dtype=np.float64)
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    segments, total = encode({"a": arr, "t": t, "n": 3})
    assert any(memoryview(s).obj is arr for s in segments if isinstance(s, memoryview))
    frame = join(segments, total)
    assert len(frame) == total
    out = decode(frame)
    whole = np.frombuffer(frame, dtype=np.uint8)
    assert np.shares_memory(out["a"], whole)  # a view over the received bytes, no copy
    assert out["a"].ctypes.data % 64 == (whole.ctypes.data % 64)  # aligned in the frame
    np.testing.assert_array_equal(out["a"], arr)
    assert torch.equal(out["t"], t) and out["n"] == 3
    out["t"][0, 0] = 9  # writable
    ro = decode(bytes(frame))  # a read-only frame is copied once, so results stay writable
    ro["a"][0] = 5
    assert ro["a"][0] == 5
