"""A stage call as a worker runs it, here in-process: inputs by reference, outputs stored
under keys that only depend on the run, the stage and the item."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from hetfaas.pipeline import FanoutExceeded, dataplane
from hetfaas.pipeline.worker import SourceItem, StageCall

from . import funcs as fx
from .conftest import shm_items


@pytest.fixture
def ns():
    name = f"w{uuid.uuid4().hex[:8]}"
    yield name
    dataplane.open_store("shm://").clear(name)


def call(fn, ns, **kw):
    opts = {"stage": "s", "index": 1, "url": "shm://", "namespace": ns, "fanout": 1,
            "inline_bytes": 1024, **kw}  # fmt: skip
    return StageCall(fn, **opts)


def test_a_call_reads_refs_and_stores_its_outputs(ns):
    src = dataplane.put_value("shm://", f"{ns}-0-7", fx.make(7))
    rep = call(fx.double, ns)("7", (src,), None)
    assert rep.bytes_in == src.nbytes and rep.bytes_out > fx.N * 4
    (out,) = rep.outputs
    assert out.key == f"{ns}-1-7" and out.inline is None
    assert np.array_equal(dataplane.get_value(out), np.full(fx.N, 14.0))
    assert rep.compute_s >= 0 and rep.peak_rss_mb > 10 and rep.state is None
    # an attempt that runs again writes the same key: the first attempt's item is replaced
    again = call(fx.double, ns)("7", (src,), None)
    assert again.outputs[0].key == out.key
    assert sorted(shm_items(ns)) == [f"hetfaas-{ns}-0-7", f"hetfaas-{ns}-1-7"]


def test_fanout_is_keyed_and_bounded(ns):
    rep = call(fx.split3, ns, fanout=3)("2", (SourceItem(fx.make(2)),), None)
    assert [r.key for r in rep.outputs] == [f"{ns}-1-2.{k}" for k in range(3)]
    with pytest.raises(FanoutExceeded, match="returned 3 items for item 2, more than its fanout=2"):
        call(fx.split3, ns, fanout=2)("2", (SourceItem(fx.make(2)),), None)


def test_a_stateful_call_starts_from_a_copy_of_the_initial_state(ns):
    init = {"w": np.zeros(3)}

    def step(state, x):
        state["w"] += x  # in place: the initial state given to the stage must not change
        return state, float(state["w"].sum())

    c = call(step, ns, state=init)
    rep = c("0", (SourceItem(1.0),), None)
    assert init["w"].sum() == 0 and rep.outputs[0].inline is not None
    assert dataplane.get_value(rep.outputs[0]) == 3.0
    rep2 = c("1", (SourceItem(2.0),), rep.state)
    assert dataplane.get_value(rep2.state)["w"].tolist() == [3.0, 3.0, 3.0]
    with pytest.raises(TypeError, match=r"must return \(new_state, output\)"):
        call(lambda state, x: x, ns, state=0)("0", (SourceItem(1),), None)


def test_to_host_keeps_host_objects_as_they_are():
    import torch

    from hetfaas.pipeline.worker import to_host

    t = torch.ones(3)
    obj = {"t": t, "l": [t, (t, 1)], "n": np.zeros(2)}
    out = to_host(obj)
    assert out["t"] is t and out["l"][1][0] is t and out["n"] is obj["n"]
    if torch.cuda.is_available():  # on a GPU machine: device tensors come back on the host
        torch.zeros(1, device="cuda")
        moved = to_host({"g": [torch.ones(2, device="cuda")]})
        assert moved["g"][0].device.type == "cpu"
