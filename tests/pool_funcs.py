"""Functions the tests run in workers (importable by name there)."""

import ctypes
import os
import time

import hetfaas


def add(a, b):
    return a + b


def ident(x):
    return x


def where(sleep_s=0.0):
    """Where and when this call ran, seen from inside the worker."""
    import torch

    t0 = time.perf_counter_ns()
    time.sleep(sleep_s)
    return {
        "pid": os.getpid(),
        "cpus": tuple(sorted(os.sched_getaffinity(0))),
        "threads": torch.get_num_threads(),
        "start": t0,
        "end": time.perf_counter_ns(),
    }


def sleepy(s):
    time.sleep(s)
    return s


def boom(msg):
    raise ValueError(msg)


class Unpicklable(Exception):
    def __init__(self, msg):
        super().__init__(msg)
        self.lock = __import__("threading").Lock()


def boom_unpicklable():
    raise Unpicklable("cannot travel")


def exit_now(code):
    os._exit(code)


def segfault():
    ctypes.string_at(0)


def returns_lock():
    return __import__("threading").Lock()


def fill(t, value):
    t.fill_(value)
    return float(t.sum())


def scaled_range(n, k):
    import numpy as np

    return np.arange(n, dtype=np.float64) * k


def chatty(x):
    print(f"hello {x}")
    return x


def visible_gpus(sleep_s=0.0):
    t0 = time.perf_counter_ns()
    time.sleep(sleep_s)
    return os.environ.get("CUDA_VISIBLE_DEVICES"), t0, time.perf_counter_ns()


def job_env():
    """What a job sees of its allocation."""
    return {
        k: os.environ.get(k)
        for k in (
            "SLURM_JOB_ID",
            "SLURM_ARRAY_JOB_ID",
            "CUDA_VISIBLE_DEVICES",
            "SLURM_CPUS_PER_TASK",
        )
    }


class PairError(Exception):
    """An exception whose constructor does not take its message: plain pickling fails."""

    def __init__(self, code, where):
        super().__init__(f"code {code} at {where}")
        self.code = code
        self.where = where


def raise_pair(code, where):
    raise PairError(code, where)


def sleep_signals_blocked(s):
    """Sleeps where no signal handler can run: as a call stuck in C code would."""
    import signal

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        time.sleep(s)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
    return s


def pool_threads():
    """The thread count of every pool this worker process has loaded, seen from inside."""
    import numpy  # noqa: F401  (OpenBLAS)
    import torch  # noqa: F401  (its OpenMP)

    from hetfaas._threads import pool_sizes

    return pool_sizes()


def pid_after(sleep_s=0.0):
    time.sleep(sleep_s)
    return os.getpid()


def started_at(sleep_s):
    t0 = time.perf_counter_ns()
    time.sleep(sleep_s)
    return os.getpid(), t0


def random_draw(hold_s=0.0):
    """This worker's pid and its next draw from numpy's global generator."""
    import numpy as np

    value = float(np.random.random())
    time.sleep(hold_s)
    return os.getpid(), value


def inverse_or_raise(i):
    return 1 / i


def burn_and_hold(seconds, mib):
    """Hold ``mib`` MiB (touched) while burning ``seconds`` of CPU; return ``mib``."""
    block = bytearray(mib * 2**20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
    return mib


def flaky(log, key, die_times=1, sleep_s=0.0, fail_with=None):
    """Marks its start in ``log``; its worker dies in the first ``die_times`` runs for
    ``key`` (after ``sleep_s``); ``fail_with``: raises that instead, every time."""
    with open(log, "a") as f:
        f.write(f"{key}\n")
    with open(log) as f:
        runs = f.read().split().count(str(key))
    time.sleep(sleep_s)
    if fail_with is not None:
        raise fail_with(f"run {runs} of {key}")
    if runs <= die_times:
        os._exit(7)
    return key


@hetfaas.idempotent
def flaky_idempotent(log, key, die_times=1, sleep_s=0.0, fail_with=None):
    return flaky(log, key, die_times, sleep_s, fail_with)


@hetfaas.idempotent
def flaky_items(log, key):
    """For a chunked map: item 3's worker dies the first time."""
    return flaky(log, key, die_times=1 if key == 3 else 0)


def gpu_matmuls(seconds):
    """Keep the call's GPU busy with matmuls for ``seconds``; how many ran."""
    import torch

    a = torch.randn(4096, 4096, device="cuda")
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        b = a @ a
        torch.cuda.synchronize()
        n += 1
    del b
    return n
