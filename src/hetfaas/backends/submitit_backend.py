"""Submitit's engines as hetfaas backends: ``"submitit-local"`` and ``"slurm"``.

Each call becomes a Submitit job running :func:`slurm_job.run_call` (what runs inside a job
lives in :mod:`hetfaas.backends.slurm_job`); calls dispatched together with the same resources
go in one ``executor.batch()``, which Slurm runs as a job array. Completion is not detected
with Submitit's ``result()`` (it sleeps a second between checks): one watcher thread looks for
each job's result file at an interval that starts at 2 ms and grows to 50 ms while nothing
happens, and asks the engine for the state of jobs that produced no result (cancelled, killed,
timed out) every ``_state_every_s``.

Futures are settled through :mod:`hetfaas.backends.contract` only. ``fut.cancel()`` of a
running call cancels its job (``scancel`` on Slurm, SIGINT then SIGKILL of the local job's
processes) or, for a call of a packed job whose other calls still run, that call alone inside
the pack. ``timeout_s`` counts from the function's start in the job (see
:class:`SubmititBackend`).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import os
import pickle
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .._future import Future
from .._resources import Resources
from ..exceptions import (
    ConfigurationError,
    EngineError,
    ExecutorShutdownError,
    JobCancelled,
    JobFailed,
    JobTimeout,
    ResourceError,
)
from . import errors
from .base import Backend, CallSpec, Capacity
from .contract import attach, start
from .remote import Payload, Reply, complete, fail
from .slurm_cli import require_slurm, slurm_command
from .slurm_info import SINFO_COMMAND, ClusterInfo, cluster_capacity, parse_sinfo, summarize
from .slurm_job import Requeueable, cancel_marker, run_call, run_packed

_ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
          "PREEMPTED", "BOOT_FAIL", "DEADLINE", "INTERRUPTED", "FINISHED", "DONE"}  # fmt: skip
# Room in the engine's time limit, beyond a call's timeout_s, for the job's start-up (a new
# Python, imports, unpickling) before the watchdog's clock starts.
_BACKSTOP_S = 60.0
# How long an engine may report a checkpointable call's job as ended before that counts: a
# requeue shows as FAILED or CANCELLED in Slurm's accounting for a while.
_REQUEUE_GRACE_S = 30.0


def id_independent_folder(folder: str | os.PathLike[str]) -> Path:
    """The part of a folder before its first of Submitit's ``%j``/``%A``/``%a`` tags: the
    same for every job."""
    keep = list(itertools.takewhile(lambda part: "%" not in part, Path(folder).parts))
    return Path(*keep) if keep else Path(".")


def _import_submitit() -> Any:
    try:
        import submitit
    except ImportError as exc:
        raise ConfigurationError(
            "the submitit backends need Submitit: pip install submitit"
        ) from exc
    return submitit


class _Call:
    """One call of a Submitit backend: prepared at submit, then tracked to its job."""

    __slots__ = ("cancel_requested", "future", "index", "params", "payload", "pending",
                 "requeue", "timeout_s")  # fmt: skip

    def __init__(
        self,
        future: Future,
        payload: Payload,
        params: dict[str, Any],
        requeue: bool,
        timeout_s: float | None,
    ) -> None:
        self.future = future
        self.payload = payload
        self.params = params
        self.requeue = requeue  # checkpointable: requeued on a timeout or preemption
        self.timeout_s = timeout_s
        self.pending: _Pending | None = None  # its job, once submitted
        self.index = 0  # its place in a packed job
        self.cancel_requested = False  # cancelled before its job was known


class _Pending:
    """One engine job and the calls it carries (one, or many when packed)."""

    __slots__ = ("ended_at", "futures", "job", "payloads", "requeue", "stream")

    def __init__(
        self,
        futures: list[Future],
        payloads: list[Payload],
        job: Any,
        requeue: bool = False,
        stream: Path | None = None,
    ) -> None:
        self.futures = futures
        self.payloads = payloads
        self.job = job
        self.ended_at = 0.0
        self.requeue = requeue
        self.stream = stream  # packed: the folder its replies are streamed to

    def done(self) -> bool:
        return all(f.done() for f in self.futures)

    def fail(self, exc: BaseException, backend: str) -> None:
        if self.stream is not None:
            shutil.rmtree(self.stream, ignore_errors=True)
        for f, payload in zip(self.futures, self.payloads, strict=True):
            if not f.done():
                fail(f, payload, exc, backend)


class SubmititBackend(Backend):
    """The shared part of the Submitit engines; subclasses make the Submitit executor.

    ``timeout_s`` is enforced by the job itself (:func:`slurm_job.run_call`'s watchdog), from
    the function's start: the engine's queue, the job's start-up and unpickling do not count.
    The engine's own time limit stays behind it as a backstop (:meth:`_time_limit`).
    """

    name = "submitit"
    _state_every_s = 1.0  # how often the engine is asked for the states of jobs
    _grace_s = 3.0  # a job the engine says has ended may still be writing its result

    def __init__(
        self,
        folder: str | os.PathLike[str] | None = None,
        pack: int = 1,
        pack_cpus: int | None = None,
        **parameters: Any,
    ) -> None:
        """``pack``: calls dispatched together run up to this many per job, on a warm local
        pool inside the job's allocation of ``pack_cpus`` cores (default: one node's cores)."""
        if pack < 1:
            raise ConfigurationError(f"pack must be >= 1, got {pack}")
        self.pack = pack
        self.pack_cpus = pack_cpus or len(os.sched_getaffinity(0))
        self._submitit = _import_submitit()
        # The folder may hold Submitit's %j/%A/%a tags (Submitit fills them per job); this
        # backend's own files go in the part before the first tag.
        self.folder = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="hetfaas-jobs-"))
        base = id_independent_folder(self.folder)
        base.mkdir(parents=True, exist_ok=True)
        self._streams = base / "replies"  # packed jobs' replies, one file per call
        self._streams.mkdir(exist_ok=True)
        self._parameters = parameters
        self._executor = self._make_executor()
        # Submitit's executor keeps its parameters and its open batch() in itself: an update
        # and the submits that follow it must not interleave with another thread's.
        self._submit_lock = threading.Lock()
        self._pending: list[_Pending] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._watcher = threading.Thread(target=self._watch, name="hetfaas-jobs", daemon=True)
        self._watcher.start()

    # -------------------------------------------------------------- engine specifics

    def _make_executor(self) -> Any:
        raise NotImplementedError

    def _time_limit(self, run_s: float) -> dict[str, Any]:
        """The engine's time limit for a job whose calls run for up to ``run_s`` seconds: a
        backstop behind the job's own watchdog, so it is rounded up with a margin."""
        return {"timeout_min": max(1, math.ceil((run_s + _BACKSTOP_S) / 60))}

    def _engine_parameters(self, res: Resources) -> dict[str, Any]:
        params: dict[str, Any] = {"cpus_per_task": res.cpus}
        if res.timeout_s is not None:
            params.update(self._time_limit(res.timeout_s))
        if res.memory_mb is not None:
            params["mem_gb"] = res.memory_mb / 1024
        if res.gpus:
            if res.gpus != int(res.gpus):
                raise ResourceError(
                    f"gpus={res.gpus}: {self.name} allocates whole GPUs, not shares of one"
                )
            params["gpus_per_node"] = int(res.gpus)
        return params

    # -------------------------------------------------------------- Backend API

    def capacity(self) -> Capacity:
        cpus = len(os.sched_getaffinity(0))
        return Capacity(cpus, 0, (), cpus, 0)

    def prepare(self, spec: CallSpec) -> _Call:
        res = spec.resources
        params = self._engine_parameters(res)  # bad requests fail here, at submit
        payload = Payload.build(spec.fn, spec.args, spec.kwargs, res)
        requeue = callable(getattr(spec.fn, "checkpoint", None))
        if not requeue:  # a checkpointable call's timeout is the engine's limit (it requeues)
            payload.timeout_s = res.timeout_s
        call = _Call(spec.future, payload, params, requeue, res.timeout_s)
        attach(spec.future, canceller=functools.partial(self._cancel, call))
        return call

    def dispatch(self, prepared: list[Any]) -> None:
        if self._closing:
            raise ExecutorShutdownError("this executor is shut down; it accepts no calls")
        groups: dict[tuple[Any, ...], list[_Call]] = {}
        for item in prepared:
            key = (item.requeue, item.payload.cpus, *sorted(item.params.items()))
            groups.setdefault(key, []).append(item)
        for items in groups.values():
            live = [it for it in items if start(it.future)]
            if live:
                self._submit(live)

    def _submit(self, live: list[_Call]) -> None:
        """Submit calls of equal resources: one job each (a job array), or packs of them."""
        first = live[0]
        params = {**self._parameters, **first.params}
        if self.pack > 1 and len(live) > 1 and not first.requeue:
            groups_of = [live[i : i + self.pack] for i in range(0, len(live), self.pack)]
            params["cpus_per_task"] = max(params.get("cpus_per_task", 1), self.pack_cpus)
            if first.timeout_s is not None:  # a pack's calls share its cores: its limit
                slots = max(1, self.pack_cpus // max(1, first.payload.cpus))  # covers them all
                rounds = math.ceil(len(groups_of[0]) / slots)
                params.update(self._time_limit(rounds * first.timeout_s))
        else:
            groups_of = [[it] for it in live]
        streams = [
            Path(tempfile.mkdtemp(prefix="pack-", dir=self._streams)) if len(g) > 1 else None
            for g in groups_of
        ]
        try:
            with self._submit_lock:
                self._executor.update_parameters(**params)
                with self._executor.batch() if len(groups_of) > 1 else contextlib.nullcontext():
                    jobs = [
                        self._submit_group(g, st) for g, st in zip(groups_of, streams, strict=True)
                    ]
        except Exception as exc:
            err = EngineError(f"{self.name} refused the submission: {exc}")
            for st in streams:
                if st is not None:
                    shutil.rmtree(st, ignore_errors=True)
            for it in live:
                fail(it.future, it.payload, err, self.name)
            raise err from exc
        records = [
            _Pending([it.future for it in g], [it.payload for it in g], job, g[0].requeue, st)
            for g, job, st in zip(groups_of, jobs, streams, strict=True)
        ]
        late = []
        with self._lock:
            for rec, group in zip(records, groups_of, strict=True):
                for i, it in enumerate(group):
                    it.future.engine_id = str(rec.job.job_id)
                    it.pending, it.index = rec, i
                    if it.cancel_requested:
                        late.append(it)
            self._pending += records
        for it in late:  # cancelled while being submitted
            self._stop(it)
        self._wake.set()

    def _submit_group(self, group: list[_Call], stream: Path | None) -> Any:
        if stream is None:
            runner = Requeueable() if group[0].requeue else run_call
            return self._executor.submit(runner, group[0].payload)
        return self._executor.submit(
            run_packed, [it.payload for it in group], self.pack_cpus, str(stream)
        )

    # -------------------------------------------------------------- cancel

    def _cancel(self, call: _Call, fut: Future) -> bool:
        """The future's canceller (a running call): stop its job, or its place in a pack."""
        with self._lock:
            if call.pending is None:  # its job is being submitted: stopped once it is known
                call.cancel_requested = True
                return True
        return self._stop(call)

    def _stop(self, call: _Call) -> bool:
        p = call.pending
        assert p is not None
        if p.stream is not None:
            others = [f for f in p.futures if f is not call.future and not f.done()]
            if others:  # the pack's other calls go on: the job cancels this one alone
                try:
                    cancel_marker(p.stream, call.index)
                except OSError:  # the pack has ended
                    return False
                return True
        return self._cancel_job(p)

    def _cancel_job(self, p: _Pending) -> bool:
        try:
            p.job.cancel(check=True)  # scancel on Slurm; SIGINT to the local job's controller
        except Exception:
            return False
        return True

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        self._closing = True
        if cancel_futures:
            with self._lock:
                pending = list(self._pending)
            for p in pending:
                with contextlib.suppress(Exception):
                    self._cancel_job(p)
        if wait:
            while True:
                with self._lock:
                    if not self._pending:
                        break
                time.sleep(0.01)
        self._wake.set()
        self._watcher.join(timeout=5)

    # -------------------------------------------------------------- completion

    def _watch(self) -> None:
        interval = 0.002
        last_states = time.monotonic()
        while True:
            with self._lock:
                pending = list(self._pending)
            if not pending:
                if self._closing:
                    return
                self._wake.wait(1.0)
                self._wake.clear()
                interval = 0.002
                continue
            finished = [p for p in pending if not p.done() and p.job.paths.result_pickle.exists()]
            for p in finished:
                self._settle(p)
            streamed = sum(self._drain(p) for p in pending if p.stream and p not in finished)
            now = time.monotonic()
            if now - last_states >= self._state_every_s:
                last_states = now
                running = [p for p in pending if p not in finished and not p.done()]
                if running:
                    self._refresh_states(running)
                for p in running:
                    self._check_state(p, now)
                requeueable = [p for p in running if p.requeue]
                if requeueable:
                    self._release_requeued(requeueable)
            with self._lock:
                gone = {id(p) for p in pending if p.done()}
                self._pending = [p for p in self._pending if id(p) not in gone]
            for p in pending:
                if p.stream is not None and id(p) in gone:
                    shutil.rmtree(p.stream, ignore_errors=True)
            interval = 0.002 if finished or streamed else min(0.05, interval * 1.5)
            if self._wake.wait(interval):
                self._wake.clear()
                interval = 0.002

    def _drain(self, p: _Pending) -> int:
        """Settle the calls of a packed job whose replies were streamed; how many."""
        if p.stream is None:
            return 0
        try:
            names = [n for n in os.listdir(p.stream) if n.endswith(".reply")]
        except OSError:
            return 0
        for name in names:
            path = p.stream / name
            try:
                reply = pickle.loads(path.read_bytes())
                index = int(name.split(".")[0])
            except Exception:
                continue  # the job's own result file settles it
            path.unlink(missing_ok=True)
            fut = p.futures[index]
            if not fut.done():
                complete(fut, p.payloads[index], reply, self.name)
        return len(names)

    def _settle(self, p: _Pending) -> None:
        from submitit.core.utils import pickle_load

        try:
            outcome, value = pickle_load(p.job.paths.result_pickle)
        except EOFError:  # still being written
            return
        if p.stream is not None:
            shutil.rmtree(p.stream, ignore_errors=True)
        replies = value if isinstance(value, list) else [value]
        if outcome == "success" and len(replies) == len(p.futures):
            for fut, payload, reply in zip(p.futures, p.payloads, replies, strict=True):
                if fut.done():  # its reply was streamed, or it was cancelled
                    continue
                state = _interrupted(reply)
                if state:  # Submitit's signal handler stopped the function: the engine's doing
                    fail(fut, payload, _job_error(p, state, "was interrupted"), self.name)
                else:
                    complete(fut, payload, reply, self.name)
        else:
            try:
                state = str(p.job.state).split()[0].upper()
            except Exception:
                state = "FAILED"
            if "timed-out" in str(value):  # Submitit's own note on a job it did not requeue
                state = "TIMEOUT"
            p.fail(_job_error(p, state, f"failed in the engine:\n{value}"), self.name)

    def _refresh_states(self, pending: list[_Pending]) -> None:
        """Hook: bring the engine's job states up to date (engine specific)."""

    def _release_requeued(self, pending: list[_Pending]) -> None:
        """Hook: let requeued jobs of checkpointable calls run again (engine specific)."""

    def _check_state(self, p: _Pending, now: float) -> None:
        try:
            state = str(p.job.state).split()[0].upper()
        except Exception:
            return
        if state not in _ENDED:
            p.ended_at = 0.0  # running again (requeued)
            return
        if not p.ended_at:
            p.ended_at = now
            return
        # a checkpointable call's job may be between runs (requeued): its end is final later
        grace = max(self._grace_s, _REQUEUE_GRACE_S) if p.requeue else self._grace_s
        if now - p.ended_at < grace or p.job.paths.result_pickle.exists():
            return
        if p.requeue and self._requeued(p):  # the engine's record is of the run before
            p.ended_at = 0.0
            return
        p.fail(_job_error(p, state, "ended without a result"), self.name)

    def _requeued(self, p: _Pending) -> bool:
        """Hook: whether the engine holds this checkpointable call's job for another run."""
        return False


def _interrupted(reply: Reply) -> str:
    """ "TIMEOUT"/"PREEMPTED" when Submitit stopped the call on the engine's signal, else ""."""
    if reply.ok:
        return ""
    with contextlib.suppress(Exception):
        exc = errors.decode(reply.data)
        if type(exc).__name__ == "UncompletedJobError":
            return "TIMEOUT" if "timed-out" in str(exc) else "PREEMPTED"
    return ""


def _job_error(p: _Pending, state: str, detail: str) -> JobFailed:
    """The error for the calls of a job that ended badly, by the engine's state."""
    job_id, iid, tail = str(p.job.job_id), p.futures[0].invocation_id, _tail(p.job)
    if state == "CANCELLED":
        return JobCancelled(f"job {job_id} was cancelled", iid, job_id, state, tail)
    if state in ("TIMEOUT", "DEADLINE"):
        return JobTimeout(f"job {job_id} ran past its time limit", iid, job_id, state, tail)
    return JobFailed(f"job {job_id} {detail} (state {state})", iid, job_id, state, tail)


def _tail(job: Any, lines: int = 20) -> str:
    with contextlib.suppress(Exception):
        text = job.stderr() or ""
        return "\n".join(text.splitlines()[-lines:])
    return ""


class SubmititLocalBackend(SubmititBackend):
    """Submitit's ``LocalExecutor``: each call a job in a new local process.

    ``timeout_s``: the job's watchdog stops the call at ``timeout_s`` after the function
    started (millisecond precision; the caller sees it within the watcher's 50 ms poll). The
    backstop is Submitit's local controller: its signal ``timeout_s + 50`` s and its kill
    ``timeout_s + 60`` s after the job's process started.
    """

    name = "submitit-local"
    _state_every_s = 0.25  # a local job's state is its process's: no engine to ask
    _grace_s = 0.5

    def _make_executor(self) -> Any:
        return self._submitit.LocalExecutor(folder=self.folder)

    def _cancel_job(self, p: _Pending) -> bool:
        """SIGKILL the job's task processes (its controller then ends by itself, as after any
        task's end). Submitit's own cancel, SIGINT to the controller, is the fallback for a job
        whose task has not started: its tasks get SIGINT, then SIGKILL a second later."""
        try:
            tasks = _children(int(p.job.job_id))  # a local job's id is its controller's pid
        except (ValueError, OSError):
            tasks = []
        for pid in tasks:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        return True if tasks else super()._cancel_job(p)

    def _time_limit(self, run_s: float) -> dict[str, Any]:
        # Submitit's local controller counts whole seconds, int(60 * timeout_min) (the half
        # second keeps float rounding from taking one off), and signals signal_delay_s early
        seconds = math.ceil(run_s) + int(_BACKSTOP_S)
        return {"timeout_min": (seconds + 0.5) / 60, "signal_delay_s": 10}

    def _engine_parameters(self, res: Resources) -> dict[str, Any]:
        params = super()._engine_parameters(res)
        params.pop("mem_gb", None)
        params.pop("cpus_per_task", None)  # the local executor runs each job as one process
        if "gpus_per_node" in params:
            params["visible_gpus"] = tuple(range(params.pop("gpus_per_node")))
        return {"timeout_min": params.get("timeout_min", 60 * 24), **params}


class SlurmBackend(SubmititBackend):
    """Submitit's ``SlurmExecutor`` on a real Slurm cluster.

    Options: ``folder`` (shared by the submitter and the nodes), ``partition``, ``pack``,
    ``release_requeued`` (see :meth:`_release_requeued`), and any ``slurm_*`` parameter of
    Submitit (e.g. ``slurm_additional_parameters``, ``slurm_max_num_timeout``: how many times
    a checkpointable call is requeued after a time limit, default 3).

    ``timeout_s``: the job's watchdog stops the call ``timeout_s`` after the function started
    (the queue, the job's start and unpickling not counted; millisecond precision in the job,
    seen by the caller within the watcher's 50 ms poll) and the caller raises ``CallTimeout``.
    Slurm's ``--time`` is the backstop, in whole minutes (Slurm's unit) with room for the job's
    start-up and for Slurm's pre-limit signal, which may come up to a minute early:
    ``ceil((timeout_s + slurm_signal_delay_s + 60 + 60) / 60)`` minutes. A call whose job hits
    that limit raises ``JobTimeout`` (a ``CallTimeout``). A checkpointable call has no watchdog:
    its ``timeout_s`` is that time limit, at which Submitit checkpoints and requeues it. Packed
    calls are timed by the pack's local pool, from each call's start.
    """

    name = "slurm"

    def __init__(
        self,
        folder: str | os.PathLike[str] | None = None,
        partition: str | None = None,
        pack: int = 1,
        pack_cpus: int | None = None,
        release_requeued: bool = True,
        **parameters: Any,
    ) -> None:
        require_slurm()
        self._release = release_requeued
        self._kicked: dict[str, float] = {}  # requeued job -> when its scheduling was asked
        self._python = parameters.pop("slurm_python", None)  # Submitit's, at construction
        self._max_num_timeout = parameters.pop("slurm_max_num_timeout", None)  # that too
        if partition is not None:
            parameters["slurm_partition"] = partition
        # Submitit signals a job 90 s before its time limit by default, which would stop
        # short calls (limits count in whole minutes) long before their timeout_s.
        parameters.setdefault("slurm_signal_delay_s", 10)
        self._signal_delay_s = float(parameters["slurm_signal_delay_s"])
        self._last_refresh = 0.0
        super().__init__(folder, pack, pack_cpus, **parameters)

    def _time_limit(self, run_s: float) -> dict[str, Any]:
        # Slurm may send the pre-limit signal up to 60 s early (its event resolution): leave
        # room so that the backstop never stops a call before its own timeout_s.
        return {"timeout_min": math.ceil((run_s + self._signal_delay_s + 60 + _BACKSTOP_S) / 60)}

    def _make_executor(self) -> Any:
        # Jobs start through slurm_entry (Submitit's runner without its one-second wait for
        # the call's pickle) unless the user gave a python command of their own.
        python = self._python or f"{shlex.quote(sys.executable)} -u -m hetfaas.backends.slurm_entry"
        extra = {} if self._max_num_timeout is None else {
            "slurm_max_num_timeout": int(self._max_num_timeout)}  # fmt: skip
        return self._submitit.AutoExecutor(
            folder=self.folder, cluster="slurm", slurm_python=python, **extra
        )

    def _refresh_states(self, pending: list[_Pending]) -> None:
        """Ask Slurm (one ``sacct`` for all jobs) at least every 2 s: Submitit's own watcher
        asks less and less often as jobs age (up to every 10 minutes), so a job cancelled or
        killed from outside would be seen late."""
        now = time.monotonic()
        if now - self._last_refresh < _REFRESH_S:
            return
        self._last_refresh = now
        with contextlib.suppress(Exception):
            pending[0].job.get_info(mode="force")

    def _release_requeued(self, pending: list[_Pending]) -> None:
        """Slurm holds a requeued batch job for about two minutes (pending, reason BeginTime)
        before it may start again; with ``release_requeued`` (the default) a requeued job of a
        checkpointable call is made eligible 2 s from now. Not at once: slurmd refuses a job
        whose credential is from the same second as its revoked one ("Job credential revoked",
        the job then ends FAILED), which a release within that second caused now and then."""
        if not self._release:
            return
        ids = ",".join(str(p.job.job_id) for p in pending)
        soon = time.time() + 10  # released already (now+2): leave it, or it never starts
        with contextlib.suppress(ConfigurationError):
            out = slurm_command(["squeue", "-h", "-o", "%i %T %r %S", "-j", ids])
            for line in out.splitlines():
                job_id, state, reason, start = [*line.split(), "", "", "", ""][:4]
                if state != "PENDING" or reason != "BeginTime":
                    continue
                try:
                    begin = time.mktime(time.strptime(start, "%Y-%m-%dT%H:%M:%S"))
                except ValueError:
                    # "N/A": its begin time has passed and it waits for the scheduler's next
                    # periodic pass (up to a minute): an update of the job starts one now
                    mono = time.monotonic()
                    if mono - self._kicked.get(job_id, -math.inf) >= _KICK_EVERY_S:
                        self._kicked[job_id] = mono
                        slurm_command(["scontrol", "update", f"JobId={job_id}",
                                       "StartTime=now"])  # fmt: skip
                    continue
                if begin <= soon:
                    continue
                slurm_command(["scontrol", "update", f"JobId={job_id}", "StartTime=now+2"])

    def _requeued(self, p: _Pending) -> bool:
        """A requeued job is in ``squeue`` again (pending, requeued, running) while Slurm's
        accounting may still report its previous run as ended (FAILED) for seconds."""
        try:
            out = slurm_command(["squeue", "-h", "-o", "%T", "-j", str(p.job.job_id)])
        except ConfigurationError:
            return False
        return any(s in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
                         "RUNNING", "RESIZING") for s in out.split())  # fmt: skip

    def cluster(self) -> ClusterInfo:
        """Every node ``sinfo`` lists, the usable ones summed, and the most one node has."""
        return summarize(parse_sinfo(slurm_command(list(SINFO_COMMAND))))

    def capacity(self) -> Capacity:
        """Cores, GPUs (GRES ``gpu`` of any type) and memory summed over the usable nodes."""
        return cluster_capacity(slurm_command(list(SINFO_COMMAND)))


_REFRESH_S = 2.0
_KICK_EVERY_S = 5.0  # a requeued job past its begin time is pushed to the scheduler this often


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux)."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(c) for c in f.read().split()]
    return found
