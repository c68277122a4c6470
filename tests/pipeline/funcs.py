"""Stage functions the pipeline tests run in workers (importable by name there).

Calls are counted with one file per call in a directory the test owns (``mark``): the count is
what really ran, whatever the driver believes.
"""

from __future__ import annotations

import os
import time
import uuid

import numpy as np

import hetfaas

N = 50_000  # float32 elements: 200 KB per item, well above inlining and out-of-band sizes


class Transient(Exception):
    """An error a test's retry policy retries."""


def mark(calls_dir: str, name: str) -> None:
    os.makedirs(calls_dir, exist_ok=True)
    path = os.path.join(calls_dir, f"{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    with open(path, "w"):
        pass


def count(calls_dir: str, name: str) -> int:
    if not os.path.isdir(calls_dir):
        return 0
    return sum(1 for n in os.listdir(calls_dir) if n.split(".")[0] == name)


def ident(x):
    return x


def make(i: int) -> np.ndarray:
    return np.full(N, float(i), dtype=np.float32)


def double(a: np.ndarray) -> np.ndarray:
    return a * 2


def total(a: np.ndarray) -> float:
    return float(a.sum())


def first(a: np.ndarray) -> float:
    return float(a[0])


def split3(a: np.ndarray) -> list[np.ndarray]:
    return [a[k::3] + k for k in range(3)]


def split1(a: np.ndarray) -> list[np.ndarray]:
    """Declared with fanout=3 like split3, but emits one piece: a join of the two never matches
    pieces 1 and 2."""
    return [a]


def scale(a: np.ndarray) -> np.ndarray:
    return a * 10


def shift(a: np.ndarray) -> np.ndarray:
    return a + 1


def combine(x: np.ndarray, y: np.ndarray) -> float:
    return float((x + y)[0])


def counted(calls_dir: str, name: str, fn_name: str, x):
    """``fn_name(x)``, counting the call in ``calls_dir`` under ``name``."""
    mark(calls_dir, name)
    return globals()[fn_name](x)


def zero_in_place(a: np.ndarray) -> float:
    """A consumer that writes into its input: no other consumer may see it."""
    a *= 0
    return float(a.sum())


def slow_total(delay_s: float, a: np.ndarray) -> float:
    time.sleep(delay_s)
    return float(a.sum())


def items_in_shm(driver_pid: int, delay_s: float, a: np.ndarray) -> int:
    """Sleep, then count the pipeline items of the driver that exist in shared memory now."""
    time.sleep(delay_s)
    prefix = f"hetfaas-{driver_pid}-pl"
    return sum(
        1 for n in os.listdir(hetfaas.shm.SHM_DIR) if n.startswith(prefix) and ".tmp" not in n
    )


def spin(seconds: float, x):
    """Burn CPU for ``seconds`` (so CPU time can be checked), then pass ``x`` on."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
    return x


def die_once(marks: str, x):
    """Kill the worker on this item's first attempt (a real fault), then pass ``x`` on."""
    key = f"{float(np.asarray(x).ravel()[0]):g}"
    path = os.path.join(marks, f"died-{key}")
    if key == "2" and not os.path.exists(path):
        with open(path, "w"):
            pass
        os._exit(3)
    return x


def transient_once(marks: str, x):
    """Raise Transient on this item's first attempt, then pass ``x`` on."""
    key = f"{float(np.asarray(x).ravel()[0]):g}"
    path = os.path.join(marks, f"transient-{key}")
    if key in ("1", "4") and not os.path.exists(path):
        with open(path, "w"):
            pass
        raise Transient(f"first attempt at {key}")
    return x


def bad_at_3(calls_dir: str, x):
    mark(calls_dir, "bad")
    if float(np.asarray(x).ravel()[0]) == 3.0:
        raise ValueError("item 3 is bad")
    return x


def accumulate(state: float, a: np.ndarray) -> tuple[float, float]:
    new = state + float(a[0])
    return new, new
