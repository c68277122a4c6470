"""Placement decisions as pure functions: no processes."""

from hetfaas import Resources
from hetfaas.backends.local.placement import choose_gpus, impossible, place


def test_cpus_prefer_the_workers_current_pinning():
    p = place(Resources(cpus=1), {0, 1, 2}, {}, 1000, prefer_cpus=(2,))
    assert p.cpus == (2,)
    p = place(Resources(cpus=2), {0, 1, 2}, {}, 1000, prefer_cpus=(2,))
    assert p.cpus == (0, 1)
    assert place(Resources(cpus=2), {1}, {}, 1000) is None


def test_whole_gpus_need_wholly_free_devices():
    assert choose_gpus(Resources(gpus=1), {0: 0.5, 1: 1.0}) == ((1,), 1.0)
    assert choose_gpus(Resources(gpus=2), {0: 0.5, 1: 1.0}) is None
    assert choose_gpus(Resources(gpus=2), {0: 1.0, 1: 1.0}) == ((0, 1), 1.0)


def test_shares_pack_onto_the_fullest_device_that_fits():
    assert choose_gpus(Resources(gpus=0.5), {0: 1.0, 1: 0.5}) == ((1,), 0.5)
    assert choose_gpus(Resources(gpus=0.6), {0: 1.0, 1: 0.5}) == ((0,), 0.6)
    assert choose_gpus(Resources(gpus=0.6), {0: 0.5}) is None


def test_memory_is_a_reservation():
    assert place(Resources(memory_mb=600), {0}, {}, 500) is None
    assert place(Resources(memory_mb=400), {0}, {}, 500) is not None


def test_impossible_explains():
    assert "core" in impossible(Resources(cpus=4), 2, 0, 1000)
    assert "no GPU" in impossible(Resources(gpus=0.5), 2, 0, 1000)
    assert "2 GPU" in impossible(Resources(gpus=3), 2, 2, 1000)
    assert impossible(Resources(cpus=2, gpus=1), 2, 1, 1000) is None
