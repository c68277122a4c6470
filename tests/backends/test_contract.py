"""A backend written outside hetfaas, with only the public contract, gets full timings."""

import threading
import time

import pytest

import hetfaas
from hetfaas.backends import Backend, Capacity, contract


class Call:
    def __init__(self, spec):
        self.fn, self.args, self.kwargs, self.future = spec.fn, spec.args, spec.kwargs, spec.future
        self.submitted_ns = time.perf_counter_ns()


class ThreadBackend(Backend):
    """A toy engine: each call runs in a thread of this process; cancel stops a waiting one."""

    name = "toy-threads"

    def __init__(self, hold_s: float = 0.0) -> None:
        self.hold_s = hold_s
        self.threads: list[threading.Thread] = []
        self.stopped: set[int] = set()

    def prepare(self, spec):
        contract.attach(spec.future, canceller=self._cancel)
        return Call(spec)

    def _cancel(self, fut):
        self.stopped.add(fut.seq)
        return True

    def dispatch(self, prepared):
        for spec in prepared:
            t = threading.Thread(target=self._run, args=(spec,))
            t.start()
            self.threads.append(t)

    def _run(self, spec):
        if not contract.start(spec.future):
            return
        queued = time.perf_counter_ns()
        time.sleep(self.hold_s)  # a "running" call the test may cancel
        if spec.future.seq in self.stopped:
            return
        start = time.perf_counter_ns()
        error, value = None, None
        try:
            value = spec.fn(*spec.args, **spec.kwargs)
        except Exception as exc:
            error = exc
        end = time.perf_counter_ns()
        done = time.perf_counter_ns()
        stamps = contract.Stamps(
            queue_ns=queued - spec.submitted_ns, cold_start_ns=0,
            transfer_in_ns=start - queued, compute_ns=end - start, transfer_out_ns=done - end,
            total_ns=done - spec.submitted_ns, submitted_ns=spec.submitted_ns,
            started_ns=start, finished_ns=end, completed_ns=done, backend=self.name,
        )  # fmt: skip
        contract.complete(spec.future, value, error=error, timings=stamps)

    def capacity(self):
        return Capacity(cpus=4, gpus=0, gpu_names=(), max_workers=4, memory_mb=1024)

    def shutdown(self, wait=True, cancel_futures=False):
        for t in self.threads:
            t.join()


@pytest.fixture
def toy():
    hetfaas.register_backend("toy-threads", ThreadBackend)
    with hetfaas.Executor("toy-threads") as ex:
        yield ex


def test_toy_backend_runs_calls_with_full_timings(toy):
    t0 = time.perf_counter_ns()
    fut = toy.submit(time.sleep, 0.02)
    assert fut.result(timeout=10) is None
    wall_us = (time.perf_counter_ns() - t0) / 1e3
    t = fut.timings
    assert t.backend == "toy-threads"
    assert t.compute_us >= 20_000
    assert t.compute_us <= t.total_us <= wall_us
    assert fut.state == hetfaas.State.COMPLETED
    assert list(toy.map(pow, [2, 3], [2, 2])) == [4, 9]


def test_toy_backend_errors_and_cancel():
    hetfaas.register_backend("toy-hold", ThreadBackend)
    with hetfaas.Executor("toy-hold", hold_s=0.3) as ex:
        bad = ex.submit(int, "x")
        with pytest.raises(ValueError):
            bad.result(timeout=10)
        assert bad.state == hetfaas.State.FAILED and bad.timings.total_us > 0
        held = ex.submit(pow, 2, 2)
        time.sleep(0.05)
        assert held.running()
        assert held.cancel()  # the toy's canceller says yes: cancelled at once
        assert held.cancelled() and held.state == hetfaas.State.CANCELLED
        with pytest.raises(hetfaas.CallCancelled):
            held.result(timeout=1)


def test_complete_ignores_an_ended_future_and_checks_its_input():
    fut = hetfaas.Future("t", 1)
    assert contract.complete(fut, 5)
    assert not contract.complete(fut, 6)  # already settled: nothing changes
    assert fut.result() == 5
    with pytest.raises(TypeError):
        contract.complete(fut, error="not an exception")


def test_register_refuses_an_incomplete_backend():
    class Half(Backend):
        def dispatch(self, prepared):
            pass

    with pytest.raises(TypeError, match="capacity"):
        hetfaas.register_backend("half", Half)
