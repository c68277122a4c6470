"""The local pool delivering its replies in an asyncio loop (``Backend.deliver_on``), as the
gateway's server uses it: real workers, a real loop."""

import asyncio
import os
import signal
import threading
import time

import pytest

import hetfaas

from .. import pool_funcs as fx


def _in_loop(ex, body):
    """Run ``body(loop, pool)`` (a coroutine function) in a new loop that delivers."""

    async def main():
        loop = asyncio.get_running_loop()
        hand_back = ex.backend.deliver_on(loop)
        assert hand_back is not None
        try:
            return await body(loop, ex.backend)
        finally:
            hand_back()

    return asyncio.run(main())


def test_replies_and_their_callbacks_come_in_the_loop_thread(ex):
    async def body(loop, pool):
        here = threading.get_ident()
        seen = []
        futs = []
        for i in range(200):
            fut = ex.submit(fx.add, i, 1)
            fut.add_done_callback(lambda f: seen.append(threading.get_ident()))
            futs.append(fut)
        values = await asyncio.gather(*(asyncio.wrap_future(f) for f in futs))
        assert values == [i + 1 for i in range(200)]
        assert seen and set(seen) == {here}  # no other thread completed any
        # another thread blocked in result(): the loop delivers its call too
        other = await asyncio.to_thread(lambda: ex.submit(fx.add, 2, 3).result(timeout=30))
        assert other == 5
        return pool

    pool = _in_loop(ex, body)
    # handed back: the pool's own threads deliver again
    assert pool._loop is None
    assert ex.submit(fx.add, 4, 4).result(timeout=30) == 8
    done = threading.Event()
    ex.submit(fx.add, 1, 1).add_done_callback(lambda f: done.set())
    assert done.wait(30)


def test_time_limits_and_dead_idle_workers_are_handled_in_the_loop(ex):
    async def body(loop, pool):
        fut = ex.options(timeout_s=0.3).submit(fx.sleepy, 30)
        t0 = time.monotonic()
        with pytest.raises(hetfaas.CallTimeout):
            await asyncio.wrap_future(fut)
        assert time.monotonic() - t0 < 10
        assert await asyncio.wrap_future(ex.submit(fx.add, 1, 2)) == 3
        (pid,) = [p for p in pool.worker_pids()]
        os.kill(pid, signal.SIGKILL)  # idle: nobody waits on it, the loop sees it go
        end = time.monotonic() + 30
        while time.monotonic() < end and pool.worker_pids() in ([], [pid]):
            await asyncio.sleep(0.02)
        assert pool.worker_pids() and pid not in pool.worker_pids()
        assert pool.deaths >= 1

    ex.warmup(1)
    _in_loop(ex, body)


def test_deliver_on_only_in_the_loop_thread_and_one_loop_at_a_time(ex):
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(RuntimeError, match="loop's thread"):
            ex.backend.deliver_on(loop)
    finally:
        loop.close()

    async def body(loop, pool):
        got = []
        other = threading.Thread(
            target=lambda: got.append(asyncio.run(_try_deliver(pool))), daemon=True
        )
        other.start()
        await asyncio.to_thread(other.join, 30)
        assert got == [None]  # a second loop is refused; the first keeps delivering
        assert await asyncio.wrap_future(ex.submit(fx.add, 1, 1)) == 2

    _in_loop(ex, body)


async def _try_deliver(pool):
    return pool.deliver_on(asyncio.get_running_loop())


def test_a_loop_that_stops_without_handing_back_loses_no_call(ex):
    """The loop dies under the pool (its thread ends, never handing delivery back): the
    reader thread notices and delivers the calls still running."""
    started = threading.Event()
    futs = []

    async def main():
        ex.backend.deliver_on(asyncio.get_running_loop())
        futs.extend(ex.submit(fx.sleepy, 0.5) for _ in range(4))
        started.set()

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    assert started.wait(30)
    thread.join(30)
    assert [f.result(timeout=30) for f in futs] == [0.5] * 4
    assert ex.backend._loop is None
    assert ex.submit(fx.add, 1, 2).result(timeout=30) == 3


def test_shutdown_from_another_thread_while_the_loop_delivers():
    ex = hetfaas.Executor(max_workers=2)

    async def main():
        ex.backend.deliver_on(asyncio.get_running_loop())
        futs = [ex.submit(fx.sleepy, 0.2) for _ in range(4)]
        await asyncio.to_thread(ex.shutdown, True)  # waits for the four to finish
        assert all(f.done() for f in futs)
        return [f.result() for f in futs]

    assert asyncio.run(main()) == [0.2] * 4
