"""Stats of a real run, checked against clocks the driver did not write (the workers' stamps,
the test's own), the critical path on a known graph, and the timeline plot."""

from __future__ import annotations

import functools
import time

import pytest

from hetfaas.pipeline import Pipeline
from hetfaas.pipeline.stats import TaskRecord, critical_path

from . import funcs as fx


def _union_s(intervals: list[tuple[int, int]]) -> float:
    total, end = 0, None
    for a, b in sorted(intervals):
        if end is None or a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total / 1e9


@pytest.fixture(scope="module")
def measured(pool):
    p = Pipeline("measured", max_in_flight=4)
    p.stage(fx.make, name="load", concurrency=(1, 2))
    p.stage(functools.partial(fx.spin, 0.06), name="cpu", concurrency=(1, 2))
    p.stage(functools.partial(fx.slow_total, 0.03), name="sink", concurrency=1)
    t0 = time.perf_counter()
    run = p.run(range(10), pool)
    outside = time.perf_counter() - t0
    yield run, outside
    run.close()


def test_stats_fields_are_present_and_plausible(measured):
    run, outside = measured
    stats = run.stats()
    assert stats.items_in == 10 and stats.wall_s <= outside
    for name, s in stats.stages.items():
        mine = [t for t in stats.tasks if t.stage == name]
        assert s.items == len(mine) == 10
        # busy time, from the workers' stamps, fits in the run's wall time on its workers
        assert 0 < s.busy_s <= stats.wall_s * s.peak_workers + 1e-3
        assert 0 < s.utilisation <= 1
        assert s.peak_rss_mb > 10
        # the four conditions cover the stage's lifetime, which ends within the run
        parts = s.working_s + s.blocked_s + s.backpressure_s + s.queued_s
        assert parts == pytest.approx(s.lifetime_s, abs=0.01)
        assert s.lifetime_s <= stats.wall_s + 1e-6
        # working covers every moment one of its calls ran in a worker (the workers' clock)
        ran = _union_s([(t.started_ns, t.finished_ns) for t in mine])
        assert s.working_s >= ran - 0.01, name
    cpu = stats.stages["cpu"]
    assert cpu.cpu_s >= 0.9 * 10 * 0.06  # the spin burns 60 ms of CPU per call
    assert cpu.cpu_s <= cpu.busy_s + 0.05
    sink = stats.stages["sink"]
    # the sink is the last to finish: its lifetime is the run, as the test's clock saw it
    assert sink.lifetime_s == pytest.approx(stats.wall_s, abs=0.05)
    assert sink.lifetime_s <= outside
    assert sink.busy_s >= 10 * 0.03
    assert sink.blocked_s > 0  # it waited for the first item to come through two stages
    assert stats.stages["load"].bytes_out == stats.stages["cpu"].bytes_in > 0


def test_critical_path_is_bounded_by_wall_and_by_each_items_chain(measured):
    run, _ = measured
    stats = run.stats()
    assert 0 < stats.critical_path_s <= stats.wall_s
    # each call's span (submit to result) holds its run: the span-weighted path is longer
    assert stats.critical_path_s <= stats.critical_span_s <= stats.wall_s
    chains: dict[str, float] = {}
    for t in stats.tasks:  # a linear chain: an item's calls form one chain of dependencies
        chains[t.key] = chains.get(t.key, 0.0) + t.duration_s
    assert stats.critical_path_s >= max(chains.values()) - 1e-9
    assert stats.critical_path_s >= max(t.duration_s for t in stats.tasks)
    assert [t.stage for t in stats.critical_path] == ["load", "cpu", "sink"]
    assert len({t.key for t in stats.critical_path}) == 1
    by_stage = stats.critical_path_by_stage()
    assert sum(by_stage.values()) == pytest.approx(stats.critical_path_s)


def test_print_out_and_dict(measured):
    run, _ = measured
    stats = run.stats()
    text = str(stats)
    for needle in ("pipeline 'measured': 10 items", "load", "cpu", "sink", "critical path",
                   "peak in flight per edge", "load->cpu"):  # fmt: skip
        assert needle in text
    d = stats.as_dict()
    assert d["stages"]["cpu"]["items"] == 10 and 0 < d["stages"]["cpu"]["utilisation"] <= 1
    assert len(d["tasks"]) == 30 and d["critical_path_s"] == stats.critical_path_s


def test_timeline_png_is_written(measured, tmp_path):
    run, _ = measured
    path = run.stats().plot_timeline(tmp_path / "timeline.png")
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    assert width > 500 and height > 100
    assert {t.worker for t in run.stats().tasks} <= {"local w0", "local w1"}


def _task(i, dur, deps=(), stage="s"):
    start = i * 10**9
    return TaskRecord(i, stage, str(i), True, None, 1, start, start + int(dur * 1e9), start,
                      start + int(dur * 1e9), 0.0, "w", 1, deps=deps)  # fmt: skip


def test_critical_path_of_a_diamond():
    tasks = [_task(0, 1.0), _task(1, 2.0, (0,)), _task(2, 0.5, (0,)), _task(3, 1.0, (1, 2))]
    path, length = critical_path(tasks)
    assert [t.index for t in path] == [0, 1, 3] and length == pytest.approx(4.0)
    retried = _task(4, 0.1, (2,))
    retried.retry_s = 5.0  # failed attempts lengthen a chain
    path, length = critical_path([*tasks, retried])
    assert [t.index for t in path] == [0, 2, 4] and length == pytest.approx(6.6)
    assert critical_path([]) == ([], 0.0)
