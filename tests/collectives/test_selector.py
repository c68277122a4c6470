"""Several channels behind one Communicator: the hint picks one per operation, and every rank
agrees on the choice (small payloads inline on the control channel, large ones after it)."""

import numpy as np
import pytest

from hetfaas.collectives import Communicator
from hetfaas.collectives.model import ChannelProfile, Prices
from hetfaas.collectives.selector import ChannelChoice, payload_nbytes
from hetfaas.exceptions import ConfigurationError

from .conftest import run_ranks

# direct TCP fast for small messages but slow for large ones: both channels get used
PROFILES = {"tcp": ChannelProfile(1e-5, 1e6), "file": ChannelProfile(1e-3, 1e9)}


def body(comm):
    r, p = comm.rank, comm.size
    choice = comm.channel
    assert isinstance(choice, ChannelChoice)
    big = np.arange(100_000, dtype=np.float64)
    assert choice.scheme_for("bcast", 8) == "tcp" and choice.scheme_for("bcast", big.nbytes) == (
        "file"
    )
    out = {
        "small": comm.bcast("x" if r == 0 else None),
        "big": comm.bcast(big if r == 0 else None),
        "sum_small": comm.allreduce(r),
        "sum_big": comm.allreduce(np.full(100_000, float(r))),
        "gather": comm.gather(big[: 10 + 20_000 * r] if r else r),  # mixed sizes, per-rank choice
        "scatter": comm.scatter([np.full(50_000 * i, i) for i in range(p)] if r == 0 else None),
        "allgather": comm.allgather(r),
        "scan": comm.scan(r),
    }
    comm.send(big * r, (r + 1) % p, tag=2)
    comm.send("note", (r + 1) % p, tag=2)
    out["recv"] = (comm.recv((r - 1) % p, tag=2), comm.recv((r - 1) % p, tag=2))
    comm.barrier()
    return out


@pytest.fixture
def choice_factory(file_uri, tcp_uri, monkeypatch):
    import hetfaas.collectives.model as model

    monkeypatch.setattr(model, "load_profiles", lambda path=None: dict(PROFILES))
    return [tcp_uri, file_uri]


def test_every_collective_through_a_choice(choice_factory):
    p = 3
    res = run_ranks(choice_factory, p, body)
    big = np.arange(100_000, dtype=np.float64)
    for r, out in enumerate(res):
        assert out["small"] == "x" and np.array_equal(out["big"], big)
        assert out["sum_small"] == 3 and (out["sum_big"] == 3.0).all()
        assert out["scatter"].shape == (50_000 * r,)
        assert out["allgather"] == [0, 1, 2] and out["scan"] == sum(range(r + 1))
        prev = (r - 1) % p
        assert np.array_equal(out["recv"][0], big * prev) and out["recv"][1] == "note"
    g = res[0]["gather"]
    assert g[0] == 0 and [len(x) for x in g[1:]] == [20_010, 40_010]


def test_cheap_hint_avoids_the_priced_channel(file_uri, tcp_uri):
    prices = Prices(vm_hour=1e6)
    choice = ChannelChoice([tcp_uri, file_uri], "cheap", PROFILES, prices)
    choice.size = 4
    assert choice.scheme_for("allreduce", 8) == "file"
    choice.hint = "fast"
    assert choice.scheme_for("allreduce", 8) == "tcp"


def test_choice_errors(file_uri):
    with pytest.raises(ConfigurationError, match="at least one"):
        ChannelChoice([])
    with pytest.raises(ConfigurationError, match="one channel per scheme"):
        ChannelChoice([file_uri, file_uri])
    with pytest.raises(ConfigurationError, match="hint must be"):
        Communicator(0, 1, "g", [file_uri], hint="slow")


def test_payload_sizes_agree_across_ranks():
    assert payload_nbytes(np.zeros(10)) == 80
    assert payload_nbytes([1, 2.0, 3]) == 24 and payload_nbytes(7) == payload_nbytes(10**12)
    assert payload_nbytes({"a": 1}) > 0
