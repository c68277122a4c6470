"""``hetfaas bench chaos``: calls while workers are killed at random, counted from inside.

N calls are submitted at once; meanwhile a killer thread SIGKILLs one of the engine's worker
processes at random moments (exponential gaps, mean ``--kill-every`` ms). Each call writes a
start mark and an end mark to a log file of the run (one ``O_APPEND`` write each), so calls that
ran twice are counted from inside the calls, not from the futures. A tenth of the calls carry
a 256 KiB array argument and return one, so kills land during shared-memory transfers too.

The table, per engine: calls completed (with the right value), failed by error type, hung (not
ended when the run's deadline passed), lost (ended without their value or a specific error:
a wrong value, cancelled though nobody cancelled), calls that ran twice, kills, and the time
to replace a worker (local pool: from the death seen to the replacement ready). Afterwards
each engine must serve 100 calls normally.

``--retries N``: the calls are of a function declared idempotent (:mod:`hetfaas.retry`), run
again up to N times when a kill ends them; the table then adds the calls retried, the most
attempts of one call, and the calls that ran more times than their attempts (from the
marks: must be 0). The target with retries: 0 failed.

Engines and what is killed:

- ``local``: the pool's worker processes;
- ``submitit-local``: the processes Submitit started for jobs;
- ``slurm``: job steps' processes (``slurm_entry``), or the job itself with ``scancel``;
- ``ray``: Ray's worker processes (``ray::...``);
- ``slurm-pilot``: the workers inside pilot blocks, or a block itself with ``scancel`` (its
  calls that began fail, the others move to the other block or a new one).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil

from .. import machine
from ..exceptions import CallCancelled, CallTimeout, JobFailed, WorkerDied
from ..retry import Retry, idempotent

EXPECTED = (WorkerDied, JobFailed)  # the errors a kill may cause; anything else is "lost"
ARRAY_BYTES = 256 << 10


def chaos_call(i: int, log: str, sleep_s: float, arr: Any = None) -> Any:
    """One call of the run: marks its start and end in ``log``, sleeps, returns its value."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"S {i}\n".encode())
        if sleep_s:
            time.sleep(sleep_s)
        value = i if arr is None else arr * 2
        os.write(fd, f"E {i}\n".encode())
    finally:
        os.close(fd)
    return value


@idempotent
def chaos_call_idempotent(i: int, log: str, sleep_s: float, arr: Any = None) -> Any:
    """``chaos_call``, declared idempotent (``--retries``): a killed run is run again."""
    return chaos_call(i, log, sleep_s, arr)


def read_marks(log: str) -> tuple[collections.Counter[int], collections.Counter[int]]:
    starts: collections.Counter[int] = collections.Counter()
    ends: collections.Counter[int] = collections.Counter()
    try:
        with open(log) as f:
            for line in f:
                kind, _, num = line.partition(" ")
                if num.strip().isdigit():
                    (starts if kind == "S" else ends)[int(num)] += 1
    except FileNotFoundError:
        pass
    return starts, ends


# ------------------------------------------------------------------ what to kill per engine


def _own_descendants(match: Callable[[psutil.Process], bool]) -> list[int]:
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if match(p):
                out.append(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def _cmdline_has(*words: str) -> Callable[[psutil.Process], bool]:
    def match(p: psutil.Process) -> bool:
        cmd = " ".join(p.cmdline())
        return any(w in cmd for w in words)

    return match


def _ray_workers() -> list[int]:
    out = []
    for p in psutil.process_iter(["name", "cmdline", "uids"]):
        try:
            name = p.info["name"] or ""
            cmd = " ".join(p.info["cmdline"] or [])
            label = name if name.startswith("ray::") else cmd
            # Ray's agents (ray::RuntimeEnvAgent, ray::DashboardAgent) are not workers:
            # killing one takes the raylet down with it
            if label.startswith("ray::") and "IDLE" not in cmd and "Agent" not in label:
                out.append(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def _slurm_targets() -> list[int]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if "hetfaas.backends.slurm_entry" in cmd or "submitit.core._submit" in cmd:
                out.append(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def _pilot_workers() -> list[int]:
    """The workers of pilot blocks: the children of each agent's fork server."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "hetfaas.backends.pilot.agent" not in " ".join(p.info["cmdline"] or []):
                continue
            for server in p.children():
                if "forkserver" in " ".join(server.cmdline()):
                    out += [w.pid for w in server.children()]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def targets_for(backend: str, ex: Any) -> Callable[[], list[int]]:
    """The pids a kill may hit, looked up afresh before each kill."""
    if backend == "local":
        return ex.backend.worker_pids
    if backend == "submitit-local":
        return lambda: _own_descendants(_cmdline_has("submitit", "hetfaas.backends"))
    if backend == "ray":
        return _ray_workers
    if backend == "slurm":
        return _slurm_targets
    if backend == "slurm-pilot":
        return _pilot_workers
    raise ValueError(f"no kill strategy for backend {backend!r}")


def _scancel_one() -> bool:
    """Slurm only: cancel one running job of ours (the other way a cluster ends a job)."""
    try:
        out = subprocess.run(
            ["squeue", "--me", "-h", "-t", "R", "-o", "%i"],
            capture_output=True, text=True, timeout=5, check=False,
        ).stdout.split()  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    if not out:
        return False
    subprocess.run(["scancel", random.choice(out)], capture_output=True, timeout=5, check=False)
    return True


class Killer(threading.Thread):
    """SIGKILLs a random target at exponential intervals until stopped."""

    def __init__(
        self, targets: Callable[[], list[int]], mean_ms: float, seed: int, scancel: bool = False
    ) -> None:
        super().__init__(name="hetfaas-chaos-killer", daemon=True)
        self.targets, self.mean_s, self.scancel = targets, mean_ms / 1e3, scancel
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.kills = 0

    def run(self) -> None:
        while not self.stop.wait(self.rng.expovariate(1.0 / self.mean_s)):
            if self.scancel and self.rng.random() < 0.5 and _scancel_one():
                self.kills += 1
                continue
            pids = self.targets()
            if not pids:
                continue
            try:
                os.kill(self.rng.choice(pids), 9)
                self.kills += 1
            except (ProcessLookupError, PermissionError):
                pass


# ------------------------------------------------------------------ one run


def run_chaos(
    backend: str,
    calls: int,
    kill_every_ms: float,
    *,
    seed: int = 0,
    max_sleep_ms: float = 2.0,
    deadline_s: float = 300.0,
    options: dict[str, Any] | None = None,
    retries: int = 0,
) -> dict[str, Any]:
    """Run ``calls`` calls on ``backend`` with kills; the row of the table. ``retries``: the
    calls are of an idempotent function, run again up to that many times."""
    import numpy as np

    from .. import Executor

    rng = random.Random(seed)
    folder = tempfile.mkdtemp(prefix="hetfaas-chaos-")
    log = os.path.join(folder, "marks.log")
    opts = dict(options or {})
    if backend in ("submitit-local", "slurm", "slurm-pilot"):
        opts.setdefault("folder", os.path.join(folder, "jobs"))
    if backend == "slurm-pilot":  # two warm one-core blocks
        opts.setdefault("pilot", {"max_blocks": 2, "cpus": 1, "memory_mb": 1000})
    arr = np.arange(ARRAY_BYTES // 8, dtype=np.float64)
    with Executor(backend, **opts) as ex:
        ex.warmup()
        scancel = backend in ("slurm", "slurm-pilot")
        killer = Killer(targets_for(backend, ex), kill_every_ms, seed, scancel=scancel)
        t0 = time.monotonic()
        futs = []
        fn, view = chaos_call, ex
        if retries:
            fn, view = chaos_call_idempotent, ex.options(retry=Retry(max_attempts=retries + 1))
        with ex.batch():
            for i in range(calls):
                sleep_s = rng.uniform(0, max_sleep_ms) / 1e3
                if i % 10 == 5:
                    futs.append(view.submit(fn, i, log, sleep_s, arr))
                else:
                    futs.append(view.submit(fn, i, log, sleep_s))
        killer.start()
        end = time.monotonic() + deadline_s
        pending = set(futs)
        while pending and time.monotonic() < end:
            pending = {f for f in pending if not f.done()}
            time.sleep(0.01)
        killer.stop.set()
        killer.join()
        wall = time.monotonic() - t0
        completed, lost, hung = 0, 0, 0
        failed: collections.Counter[str] = collections.Counter()
        for i, fut in enumerate(futs):
            if not fut.done():
                hung += 1
                continue
            if fut.cancelled():
                lost += 1
                continue
            exc = fut.exception()
            if exc is None:
                value = fut.result()
                ok = value == i if i % 10 != 5 else bool(np.array_equal(value, arr * 2))
                completed += ok
                lost += not ok
            elif isinstance(exc, EXPECTED) and not isinstance(exc, CallCancelled | CallTimeout):
                failed[type(exc).__name__] += 1
            else:
                failed[type(exc).__name__] += 1
                lost += 1
        after = list(ex.map(chaos_call, range(calls, calls + 100), [log] * 100, [0.0] * 100))
        after_ok = sum(v == calls + k for k, v in enumerate(after))
        replace = list(getattr(ex.backend, "replacement_ns", ()))
    starts, _ = read_marks(log)
    twice = sum(1 for i, n in starts.items() if i < calls and n > 1)
    # a call may run as many times as it had attempts, no more
    attempts = [f.attempts for f in futs]
    overrun = sum(1 for i, n in starts.items() if i < calls and n > attempts[i])
    return {
        "backend": backend,
        "calls": calls,
        "kill_every_ms": kill_every_ms,
        "kills": killer.kills,
        "completed": completed,
        "failed": dict(failed),
        "hung": hung,
        "lost": lost,
        "ran_twice": twice,
        "retries": retries,
        "retried": sum(a > 1 for a in attempts),
        "attempts_max": max(attempts, default=0),
        "ran_more_than_attempts": overrun,
        "after_ok": after_ok,
        "replacements": len(replace),
        "replace_p50_ms": statistics.median(replace) / 1e6 if replace else None,
        "replace_p99_ms": sorted(replace)[int(0.99 * (len(replace) - 1))] / 1e6
        if replace
        else None,
        "wall_s": wall,
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| engine | calls | kills | completed | failed (by type) | hung | lost | ran twice "
        "| retries: calls retried, most attempts, runs past attempts "
        "| replace p50 / p99 (ms) | served after | wall (s) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        failed = ", ".join(f"{k} {v}" for k, v in sorted(r["failed"].items())) or "0"
        rep = (
            f"{r['replace_p50_ms']:.0f} / {r['replace_p99_ms']:.0f}"
            if r["replace_p50_ms"] is not None
            else "n/a"
        )
        retry = "off"
        if r.get("retries"):
            retry = f"{r['retried']}, {r['attempts_max']}, {r['ran_more_than_attempts']}"
        lines.append(
            f"| {r['backend']} | {r['calls']} | {r['kills']} | {r['completed']} | {failed} "
            f"| {r['hung']} | {r['lost']} | {r['ran_twice']} | {retry} | {rep} "
            f"| {r['after_ok']}/100 "
            f"| {r['wall_s']:.1f} |"
        )
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calls", type=int, default=10_000, help="calls per engine (10000)")
    p.add_argument("--kill-every", type=float, default=20.0, metavar="MS",
                   help="mean time between kills in ms (20)")  # fmt: skip
    p.add_argument("--backends", default="local",
                   help="comma-separated: local, submitit-local, slurm, slurm-pilot, ray "
                        "(local)")  # fmt: skip
    p.add_argument("--max-sleep-ms", type=float, default=2.0,
                   help="each call sleeps uniformly up to this (2)")  # fmt: skip
    p.add_argument("--deadline", type=float, default=300.0,
                   help="seconds after which calls not ended count as hung (300)")  # fmt: skip
    p.add_argument("--retries", type=int, default=0,
                   help="calls of an idempotent function, run again up to N times (0)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the rows as JSON")


def run(args: argparse.Namespace) -> int:
    rows = []
    for name in [b.strip() for b in args.backends.split(",") if b.strip()]:
        rows.append(
            run_chaos(
                name, args.calls, args.kill_every, seed=args.seed,
                max_sleep_ms=args.max_sleep_ms, deadline_s=args.deadline,
                retries=args.retries,
            )
        )  # fmt: skip
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        info = machine.describe()
        print(f"# chaos: {info.get('cpu_model', '?')}, {os.cpu_count()} cores\n")
        print(format_table(rows))
    bad = any(
        r["hung"] or r["lost"] or r["ran_more_than_attempts"] or r["after_ok"] != 100
        or (r["ran_twice"] and not r["retries"])
        for r in rows
    )  # fmt: skip
    return 1 if bad else 0
