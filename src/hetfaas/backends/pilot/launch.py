"""How pilot blocks are started, watched and ended: Slurm batch jobs, or local processes.

:class:`SlurmLauncher` (the default) starts each block with plain ``sbatch`` -- one node, one
task, the pilot's cores (``--cpus-per-task``), GPUs (``--gres=gpu:N``), memory (``--mem``)
and time limit (``--time``, whole minutes) -- running the agent (``python -m
hetfaas.backends.pilot.agent``); it reads states with ``squeue`` and ends blocks with
``scancel``. Submitit is not needed: a block is one command, not a pickled call.

:class:`ProcessLauncher` runs the same agent as a child process of the submitter: the pilot
without a scheduler, for development and for testing the pilot's wire and faults where no
Slurm runs.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import hetfaas

from ...exceptions import ConfigurationError, EngineError
from ..slurm_cli import require_slurm
from .strategy import Pilot

# squeue states of a job that is on its way or running (anything else, or absent: ended)
ALIVE = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED",
                   "RESIZING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING",
                   "STAGE_OUT"})  # fmt: skip


def agent_command(
    python: str, connect: str, secret: Path, block_id: int, pilot: Pilot
) -> list[str]:
    """The agent's command line for one block."""
    cmd = [python, "-u", "-m", "hetfaas.backends.pilot.agent", "--connect", connect,
           "--secret", str(secret), "--block", str(block_id), "--walltime", f"{pilot.walltime_s:g}",
           "--cpus", str(pilot.cpus), "--gpus", str(pilot.gpus)]  # fmt: skip
    if pilot.memory_mb is not None:
        cmd += ["--memory-mb", str(pilot.memory_mb)]
    return cmd


def _package_path() -> str:
    """The folder that holds the hetfaas package, first on the block's PYTHONPATH: a block
    runs the submitter's hetfaas even where it is not installed (a source checkout)."""
    here = str(Path(hetfaas.__file__).resolve().parents[1])
    rest = os.environ.get("PYTHONPATH", "")
    return here if not rest else f"{here}{os.pathsep}{rest}"


class Launcher(ABC):
    """Starts, watches and ends the blocks of one executor."""

    name = ""

    @abstractmethod
    def launch(self, block_id: int, command: list[str], pilot: Pilot, log: Path) -> str:
        """Start one block; its job id. Raises EngineError when the engine refuses."""

    @abstractmethod
    def states(self, job_ids: Sequence[str]) -> dict[str, str]:
        """The engine's state of each of ``job_ids`` still alive (an ended job is absent)."""

    @abstractmethod
    def cancel(self, job_ids: Sequence[str]) -> None:
        """End these blocks now (those already ended are ignored)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Forget what is left (after the blocks were cancelled)."""


class SlurmLauncher(Launcher):
    """Blocks as Slurm batch jobs (``sbatch``/``squeue``/``scancel``)."""

    name = "slurm"

    def __init__(
        self,
        partition: str | None = None,
        sbatch_options: Sequence[str] | dict[str, object] | None = None,
        job_name: str = "hetfaas-pilot",
    ) -> None:
        require_slurm(reachable=False)
        self.partition = partition
        self.job_name = job_name
        if isinstance(sbatch_options, dict):
            self.extra = [f"--{k.replace('_', '-')}" + ("" if v is True else f"={v}")
                          for k, v in sbatch_options.items() if v is not False]  # fmt: skip
        else:
            self.extra = list(sbatch_options or [])

    def sbatch_command(self, command: list[str], pilot: Pilot, log: Path) -> list[str]:
        args = ["sbatch", "--parsable", f"--job-name={self.job_name}", f"--output={log}",
                "--nodes=1", "--ntasks=1", f"--cpus-per-task={pilot.cpus}",
                f"--time={pilot.slurm_minutes}"]  # fmt: skip
        if self.partition:
            args.append(f"--partition={self.partition}")
        if pilot.gpus:
            args.append(f"--gres=gpu:{pilot.gpus}")
        if pilot.memory_mb is not None:
            args.append(f"--mem={pilot.memory_mb}M")
        wrap = f"export PYTHONPATH={shlex.quote(_package_path())}; exec {shlex.join(command)}"
        return [*args, *self.extra, f"--wrap={wrap}"]

    def launch(self, block_id: int, command: list[str], pilot: Pilot, log: Path) -> str:
        cmd = self.sbatch_command(command, pilot, log)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            raise EngineError(f"sbatch failed: {exc}") from exc
        if proc.returncode != 0:
            raise EngineError(f"sbatch refused pilot block {block_id}: "
                              f"{(proc.stderr or proc.stdout).strip()}")  # fmt: skip
        return proc.stdout.strip().split(";")[0]

    def states(self, job_ids: Sequence[str]) -> dict[str, str]:
        if not job_ids:
            return {}
        try:
            proc = subprocess.run(["squeue", "-h", "-o", "%i %T", "-j", ",".join(job_ids)],
                                  capture_output=True, text=True, timeout=30)  # fmt: skip
        except (OSError, subprocess.SubprocessError) as exc:
            raise EngineError(f"squeue failed: {exc}") from exc
        if proc.returncode != 0:
            if "Invalid job id" in proc.stderr:
                return {}  # none of them is known any more
            raise EngineError(f"squeue failed: {proc.stderr.strip()}")
        out = {}
        for line in proc.stdout.splitlines():
            job, _, state = line.strip().partition(" ")
            if job in job_ids and state in ALIVE:
                out[job] = state
        return out

    def cancel(self, job_ids: Sequence[str]) -> None:
        if job_ids:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(["scancel", *job_ids], capture_output=True, timeout=30)


class ProcessLauncher(Launcher):
    """Blocks as child processes of the submitter (no scheduler)."""

    name = "process"

    def __init__(self) -> None:
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    def launch(self, block_id: int, command: list[str], pilot: Pilot, log: Path) -> str:
        env = {**os.environ, "PYTHONPATH": _package_path()}
        env.pop("SLURM_JOB_ID", None)
        try:
            with open(log, "ab") as out:
                proc = subprocess.Popen(
                    command, stdout=out, stderr=subprocess.STDOUT, env=env,
                    stdin=subprocess.DEVNULL, start_new_session=True,
                )  # fmt: skip
        except OSError as exc:
            raise EngineError(f"cannot start pilot block {block_id}: {exc}") from exc
        job = f"p{proc.pid}"
        with self._lock:
            self._procs[job] = proc
        return job

    def pid(self, job_id: str) -> int:
        """The agent's pid of a block (tests kill it)."""
        return self._procs[job_id].pid

    def states(self, job_ids: Sequence[str]) -> dict[str, str]:
        with self._lock:
            procs = {j: self._procs.get(j) for j in job_ids}
        return {j: "RUNNING" for j, p in procs.items() if p is not None and p.poll() is None}

    def cancel(self, job_ids: Sequence[str]) -> None:
        with self._lock:
            procs = [self._procs[j] for j in job_ids if j in self._procs]
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(OSError):
                    os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def close(self) -> None:
        with self._lock:
            jobs = list(self._procs)
        self.cancel(jobs)


def make_launcher(
    name: str | Launcher,
    partition: str | None,
    sbatch_options: Sequence[str] | dict[str, object] | None,
    job_name: str,
) -> Launcher:
    if isinstance(name, Launcher):
        return name
    if name == "slurm":
        return SlurmLauncher(partition, sbatch_options, job_name)
    if name == "process":
        return ProcessLauncher()
    raise ConfigurationError(f"launcher must be 'slurm' or 'process', got {name!r}")


__all__ = ["Launcher", "ProcessLauncher", "SlurmLauncher", "agent_command", "make_launcher"]
