"""Submitit's engines as hetfaas backends: ``"submitit-local"`` and ``"slurm"``.

Each call becomes a Submitit job running :func:`remote.run_payload`; calls dispatched together
with the same resources go in one ``executor.batch()``, which Slurm runs as a job array.
Completion is not detected with Submitit's ``result()`` (it sleeps a second between checks):
one watcher thread looks for each job's result file at an interval that starts at 2 ms and
grows to 50 ms while nothing happens, and asks the engine for the state of jobs that produced
no result (cancelled, killed, timed out) once a second.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import shlex
import shutil
import subprocess
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
from .remote import Payload, Reply, complete, fail, run_payload

_ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
          "PREEMPTED", "BOOT_FAIL", "DEADLINE", "INTERRUPTED", "FINISHED", "DONE"}  # fmt: skip
_STATE_EVERY_S = 1.0
_GRACE_S = 3.0  # a job the engine says has ended may still be writing its result


def _import_submitit() -> Any:
    try:
        import submitit
    except ImportError as exc:
        raise ConfigurationError(
            "the submitit backends need Submitit: pip install submitit"
        ) from exc
    return submitit


class _Prepared:
    __slots__ = ("future", "params", "payload", "requeue")

    def __init__(
        self, future: Future, payload: Payload, params: dict[str, Any], requeue: bool
    ) -> None:
        self.future = future
        self.payload = payload
        self.params = params
        self.requeue = requeue  # checkpointable: requeued on a timeout or preemption


class _Pending:
    """One engine job and the calls it carries (one, or many when packed)."""

    __slots__ = ("ended_at", "futures", "job", "payloads", "requeue", "stream")

    def __init__(
        self, futures: list[Future], payloads: list[Payload], job: Any, requeue: bool = False
    ) -> None:
        self.futures = futures
        self.payloads = payloads
        self.job = job
        self.ended_at = 0.0
        self.requeue = requeue
        self.stream: Path | None = getattr(job, "_hetfaas_stream", None)  # packed: replies

    def done(self) -> bool:
        return all(f.done() for f in self.futures)

    def fail(self, exc: BaseException, backend: str) -> None:
        if self.stream is not None:
            shutil.rmtree(self.stream, ignore_errors=True)
        for f, payload in zip(self.futures, self.payloads, strict=True):
            if not f.done():
                fail(f, payload, exc, backend)


class Requeueable:
    """What a job runs for a call whose function has a ``checkpoint`` method (Submitit's
    ``helpers.Checkpointable`` contract). On a timeout or preemption signal Submitit calls
    ``checkpoint``: this one asks the user's function -- the very object that is running, with
    its state so far -- for its own, ``DelayedSubmission(function, *args, **kwargs)`` (or None:
    no requeue), and Submitit requeues the job with that call in place of the first."""

    def __init__(self) -> None:
        self.requeued = False

    def __call__(self, payload: Payload) -> Reply:
        reply = run_payload(payload)
        if self.requeued:
            # Submitit leaves by SystemExit once the job is requeued; run_payload caught it
            # as the call's error. Leave without a result: the requeued job writes it.
            raise SystemExit(-1)
        return reply

    def checkpoint(self, payload: Payload) -> Any:
        from submitit.helpers import DelayedSubmission

        fn = _loaded_function(payload)
        args, kwargs = pickle.loads(payload.args)
        delayed = fn.checkpoint(*args, **kwargs)
        if delayed is None:
            return None
        self.requeued = True
        again = payload.with_call(delayed.function, delayed.args, delayed.kwargs)
        return DelayedSubmission(Requeueable(), again)


def _loaded_function(payload: Payload) -> Any:
    from . import remote

    fn = remote._loaded.get(payload.digest)
    return fn if fn is not None else pickle.loads(payload.fn)


def run_packed(payloads: list[Payload], cpus: int, stream: str | None = None) -> list[Reply]:
    """Inside one allocation: run many calls on a warm local pool of ``cpus`` cores. With
    ``stream`` (a folder the submitter watches), each reply is also written there as soon as
    its call ends, so the caller has it before the whole pack is done."""
    import concurrent.futures as cf

    from .._executor import Executor

    have = len(os.sched_getaffinity(0))
    with Executor("local", cpus=max(1, min(cpus, have))) as ex:
        futures = [ex.submit(run_payload, p) for p in payloads]
        if stream:
            index = {id(f): i for i, f in enumerate(futures)}
            for f in cf.as_completed(futures):
                if f.exception() is None:
                    _write_reply(Path(stream), index[id(f)], f.result())
        return [f.result() for f in futures]


def _write_reply(folder: Path, index: int, reply: Reply) -> None:
    tmp = folder / f".{index}.tmp"
    tmp.write_bytes(pickle.dumps(reply, protocol=5))
    tmp.rename(folder / f"{index}.reply")  # atomic: the watcher never sees half a reply


class SubmititBackend(Backend):
    """The shared part of the Submitit engines; subclasses make the Submitit executor."""

    name = "submitit"

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
        self.folder = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="hetfaas-jobs-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        self._streams = self.folder / "replies"  # packed jobs' replies, one file per call
        self._streams.mkdir(exist_ok=True)
        self._parameters = parameters
        self._executor = self._make_executor()
        self._pending: list[_Pending] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._watcher = threading.Thread(target=self._watch, name="hetfaas-jobs", daemon=True)
        self._watcher.start()

    # -------------------------------------------------------------- engine specifics

    def _make_executor(self) -> Any:
        raise NotImplementedError

    def _engine_parameters(self, res: Resources) -> dict[str, Any]:
        params: dict[str, Any] = {"cpus_per_task": res.cpus}
        if res.timeout_s is not None:
            params["timeout_min"] = max(1, math.ceil(res.timeout_s / 60))
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

    def prepare(self, spec: CallSpec) -> _Prepared:
        params = self._engine_parameters(spec.resources)  # bad requests fail here, at submit
        payload = Payload.build(spec.fn, spec.args, spec.kwargs, spec.resources)
        requeue = callable(getattr(spec.fn, "checkpoint", None))
        return _Prepared(spec.future, payload, params, requeue)

    def dispatch(self, prepared: list[Any]) -> None:
        if self._closing:
            raise ExecutorShutdownError("this executor is shut down; it accepts no calls")
        groups: dict[tuple[Any, ...], list[_Prepared]] = {}
        for item in prepared:
            key = (item.requeue, *sorted(item.params.items()))
            groups.setdefault(key, []).append(item)
        for items in groups.values():
            live = [it for it in items if it.future.set_running_or_notify_cancel()]
            if not live:
                continue
            params = {**self._parameters, **live[0].params}
            if self.pack > 1 and len(live) > 1 and not live[0].requeue:
                groups_of = [live[i : i + self.pack] for i in range(0, len(live), self.pack)]
                params["cpus_per_task"] = max(params.get("cpus_per_task", 1), self.pack_cpus)
            else:
                groups_of = [[it] for it in live]
            self._executor.update_parameters(**params)
            try:
                with self._executor.batch() if len(groups_of) > 1 else contextlib.nullcontext():
                    jobs = [self._submit_group(group) for group in groups_of]
            except Exception as exc:
                err = EngineError(f"{self.name} refused the submission: {exc}")
                for it in live:
                    it.future.set_exception(err)
                raise err from exc
            records = []
            for group, job in zip(groups_of, jobs, strict=True):
                for it in group:
                    it.future.engine_id = str(job.job_id)
                futures, payloads = [it.future for it in group], [it.payload for it in group]
                records.append(_Pending(futures, payloads, job, group[0].requeue))
            with self._lock:
                self._pending += records
            self._wake.set()

    def _submit_group(self, group: list[_Prepared]) -> Any:
        if len(group) == 1:
            runner = Requeueable() if group[0].requeue else run_payload
            return self._executor.submit(runner, group[0].payload)
        stream = Path(tempfile.mkdtemp(prefix="pack-", dir=self._streams))
        job = self._executor.submit(
            run_packed, [it.payload for it in group], self.pack_cpus, str(stream)
        )
        job._hetfaas_stream = stream
        return job

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        self._closing = True
        if cancel_futures:
            with self._lock:
                for p in self._pending:
                    with contextlib.suppress(Exception):
                        p.job.cancel(check=False)
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
            finished = [p for p in pending if p.job.paths.result_pickle.exists()]
            for p in finished:
                self._settle(p)
            streamed = sum(self._drain(p) for p in pending if p.stream and p not in finished)
            now = time.monotonic()
            if now - last_states >= _STATE_EVERY_S:
                last_states = now
                for p in pending:
                    if p not in finished:
                        self._check_state(p, now)
                requeueable = [p for p in pending if p.requeue and p not in finished]
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
                if fut.done():  # its reply was streamed
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
        if now - p.ended_at < _GRACE_S or p.job.paths.result_pickle.exists():
            return
        p.fail(_job_error(p, state, "ended without a result"), self.name)


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
    """Submitit's ``LocalExecutor``: each call a job in a new local process."""

    name = "submitit-local"

    def _make_executor(self) -> Any:
        return self._submitit.LocalExecutor(folder=self.folder)

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
    ``timeout_s`` becomes a time limit in whole minutes (Slurm's unit) with room for Slurm's
    early pre-limit signal: the call is stopped after ``timeout_s``, within about a minute.
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
        _check_slurm()
        self._release = release_requeued
        self._python = parameters.pop("slurm_python", None)  # Submitit's, at construction
        if partition is not None:
            parameters["slurm_partition"] = partition
        # Submitit signals a job 90 s before its time limit by default, which would stop
        # short calls (limits count in whole minutes) long before their timeout_s.
        parameters.setdefault("slurm_signal_delay_s", 10)
        self._signal_delay_s = float(parameters["slurm_signal_delay_s"])
        super().__init__(folder, pack, pack_cpus, **parameters)

    def _engine_parameters(self, res: Resources) -> dict[str, Any]:
        params = super()._engine_parameters(res)
        if res.timeout_s is not None:
            # Slurm may send the pre-limit signal up to 60 s early (its event resolution):
            # leave room so that a call is never stopped before its own timeout_s.
            params["timeout_min"] = math.ceil((res.timeout_s + self._signal_delay_s + 60) / 60)
        return params

    def _make_executor(self) -> Any:
        # Jobs start through slurm_entry (Submitit's runner without its one-second wait for
        # the call's pickle) unless the user gave a python command of their own.
        python = self._python or f"{shlex.quote(sys.executable)} -u -m hetfaas.backends.slurm_entry"
        return self._submitit.AutoExecutor(folder=self.folder, cluster="slurm", slurm_python=python)

    def _release_requeued(self, pending: list[_Pending]) -> None:
        """Slurm holds a requeued batch job for about two minutes (pending, reason BeginTime)
        before it may start again; with ``release_requeued`` (the default) a requeued job of a
        checkpointable call is made eligible at once."""
        if not self._release:
            return
        ids = ",".join(str(p.job.job_id) for p in pending)
        with contextlib.suppress(ConfigurationError):
            for line in _run(["squeue", "-h", "-o", "%i %T %r", "-j", ids]).splitlines():
                job_id, state, reason = [*line.split(), "", "", ""][:3]
                if state == "PENDING" and reason == "BeginTime":
                    _run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"])

    def capacity(self) -> Capacity:
        out = _run(["sinfo", "-h", "-o", "%c %G %m"]).split()
        cpus = int(out[0]) if out and out[0].isdigit() else 0
        gres = out[1] if len(out) > 1 else ""
        gpus = int(gres.rsplit(":", 1)[-1]) if gres.startswith("gpu:") else 0
        mem = int(out[2]) if len(out) > 2 and out[2].isdigit() else 0
        return Capacity(cpus, gpus, (), cpus, mem)


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=15, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigurationError(f"{' '.join(cmd)} failed: {exc}") from exc


def _check_slurm() -> None:
    if shutil.which("sbatch") is None:
        raise ConfigurationError(
            "Slurm is not installed here (no sbatch on PATH); start one with scripts/slurm-up"
        )
    try:
        _run(["sinfo", "-h"])
    except ConfigurationError as exc:
        raise ConfigurationError(f"Slurm is not reachable: {exc}") from None
