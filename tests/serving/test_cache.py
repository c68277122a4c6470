"""ModelCache: LRU and GDSF orders, never over capacity, pinned models never evicted."""

import random

import pytest

from hetfaas.exceptions import ConfigurationError, ModelTooLarge, ServingError
from hetfaas.serving.cache import ModelCache


def test_lru_evicts_the_least_recently_used_first():
    c = ModelCache(100)
    assert c.admit("a", 40) == []
    assert c.admit("b", 40) == []
    c.touch("a")
    assert c.admit("c", 40) == ["b"]
    assert list(c) == ["a", "c"] and c.used == 80 and c.free == 20
    assert c.admit("d", 100) == ["a", "c"]


def test_pinned_models_are_skipped_and_can_block():
    c = ModelCache(100)
    c.admit("a", 60)
    c.pin("a")
    with pytest.raises(ServingError, match="in use"):
        c.admit("b", 60)
    with pytest.raises(ServingError, match="in use"):
        c.evict("a")
    c.unpin("a")
    assert c.admit("b", 60) == ["a"]
    with pytest.raises(ServingError, match="not pinned"):
        c.unpin("b")


def test_too_large_and_bad_sizes():
    c = ModelCache(100)
    with pytest.raises(ModelTooLarge, match="101 bytes"):
        c.admit("x", 101)
    with pytest.raises(ConfigurationError):
        c.admit("x", 0)
    with pytest.raises(ConfigurationError):
        ModelCache(0)
    with pytest.raises(ConfigurationError, match="known evictions: lru, gdsf"):
        ModelCache(10, "mru")
    c.admit("x", 10)
    with pytest.raises(ServingError, match="already resident"):
        c.admit("x", 10)


def test_gdsf_keeps_the_frequently_used_and_costly():
    c = ModelCache(100, "gdsf")
    c.admit("hot", 40, cost=1.0)
    for _ in range(5):
        c.touch("hot", cost=1.0)
    c.admit("cold", 40, cost=1.0)
    # LRU would evict "hot" (touched before "cold" arrived); GDSF evicts the once-used one
    assert c.admit("new", 40, cost=1.0) == ["cold"]
    c.check_invariants()


@pytest.mark.parametrize("eviction", ["lru", "gdsf"])
def test_invariants_hold_after_every_operation_of_a_random_run(eviction):
    rng = random.Random(7)
    c = ModelCache(1000, eviction)
    sizes = {m: rng.randint(1, 400) for m in range(30)}
    pins: dict[int, int] = {}
    for _ in range(5000):
        m = rng.randrange(30)
        op = rng.random()
        try:
            if op < 0.5:
                if m in c:
                    c.touch(m, 1.0)
                else:
                    evicted = c.admit(m, sizes[m], 1.0)
                    assert not any(v in pins for v in evicted)
            elif op < 0.7 and m in c:
                c.pin(m)
                pins[m] = pins.get(m, 0) + 1
            elif op < 0.9 and pins.get(m):
                c.unpin(m)
                pins[m] -= 1
                if not pins[m]:
                    del pins[m]
            elif m in c and m not in pins:
                c.evict(m)
        except ServingError as exc:
            assert "in use" in str(exc)
        c.check_invariants()
        assert c.used <= c.capacity
        assert all(p in c for p in pins)
