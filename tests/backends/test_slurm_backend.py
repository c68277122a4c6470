"""The slurm backend against real Slurm daemons on this machine (scripts/slurm-up)."""

import os
import pathlib
import shutil
import subprocess
import time

import pytest

import hetfaas
from hetfaas._invocation import PHASES

from .. import pool_funcs as fx

pytest.importorskip("submitit")
helpers = pytest.importorskip("submitit.helpers")

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("starting Slurm daemons here needs root and apt-get")
    proc = subprocess.run(
        [str(ROOT / "scripts" / "slurm-up")], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ex = hetfaas.Executor("slurm", folder=tmp_path_factory.mktemp("slurm-jobs"))
    yield ex
    ex.shutdown(wait=False, cancel_futures=True)


def test_submit_runs_as_a_slurm_job(slurm):
    fut = slurm.submit(fx.job_env)
    env = fut.result(timeout=120)
    assert env["SLURM_JOB_ID"]
    t = fut.timings
    assert t.backend == "slurm"
    assert abs(sum(getattr(t, p) for p in PHASES) - t.total_us) < 1.0
    # Slurm's part (sbatch, pending, launch) is queue; the job's new Python starting is cold
    assert t.queue_us > 0 and t.cold_start_us > 0


def test_map_is_a_job_array(slurm):
    futs = slurm.map_futures(fx.add, range(4), range(4))
    assert [f.result(timeout=180) for f in futs] == [0, 2, 4, 6]
    envs = [f.result(timeout=180) for f in slurm.map_futures(lambda _: fx.job_env(), range(3))]
    arrays = {e["SLURM_ARRAY_JOB_ID"] for e in envs}
    assert len(arrays) == 1 and None not in arrays


def test_gres_gpu_request_sets_cuda_visible_devices(slurm):
    if slurm.capacity.gpus == 0:
        pytest.skip("slurm-up declared no GPU")
    env = slurm.options(gpus=1).submit(fx.job_env).result(timeout=120)
    assert env["CUDA_VISIBLE_DEVICES"] not in (None, "")


def test_remote_exception_and_failure(slurm):
    with pytest.raises(ValueError, match="in a job"):
        slurm.submit(fx.boom, "in a job").result(timeout=120)
    with pytest.raises(hetfaas.JobFailed) as info:
        slurm.submit(fx.exit_now, 3).result(timeout=120)
    assert info.value.job_id and info.value.state


def test_scancel_reaches_the_caller(slurm):
    fut = slurm.submit(fx.sleepy, 120)
    job_id = fut.engine_id
    assert job_id
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # let it start, so that scancel kills a running job
        state = subprocess.run(
            ["squeue", "-h", "-o", "%T", "-j", job_id], capture_output=True, text=True
        ).stdout.strip()
        if state == "RUNNING":
            break
        time.sleep(0.2)
    subprocess.run(["scancel", job_id], check=True)
    with pytest.raises(hetfaas.JobCancelled) as info:
        fut.result(timeout=120)
    assert info.value.job_id == job_id
    assert fut.timings.total_us > 0 and fut.timings.queue_us == fut.timings.total_us


@pytest.mark.slow
def test_time_limit_raises_job_timeout(slurm):
    t0 = time.monotonic()
    with pytest.raises(hetfaas.JobTimeout) as info:
        slurm.options(timeout_s=30).submit(fx.sleepy, 600).result(timeout=400)
    assert isinstance(info.value, hetfaas.CallTimeout)
    assert time.monotonic() - t0 >= 30  # never before the call's own timeout_s


class Countdown(helpers.Checkpointable):
    """A checkpointable call: its progress is its state, kept across requeues."""

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.done = 0
        self.runs = 0

    def __call__(self, steps: int) -> tuple[int, int]:
        self.runs += 1
        with open(self.marker, "a") as f:
            f.write(f"run {self.runs} from step {self.done}\n")
        while self.done < steps:
            time.sleep(0.1)
            self.done += 1
        return self.done, self.runs


def test_checkpointable_call_is_requeued_with_its_state(slurm, tmp_path):
    marker = tmp_path / "runs.txt"
    fut = slurm.submit(Countdown(str(marker)), 60)
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.5)  # some progress to keep
    # What Slurm sends before a time limit or a preemption (Submitit's own test hook does this)
    subprocess.run(["scancel", "--signal", "USR2", fut.engine_id], check=True)
    steps, runs = fut.result(timeout=240)
    assert (steps, runs) == (60, 2)
    lines = marker.read_text().splitlines()
    assert lines[0] == "run 1 from step 0"
    assert lines[1].startswith("run 2 from step ") and int(lines[1].split()[-1]) > 0


def test_call_without_checkpoint_is_not_requeued(slurm):
    fut = slurm.submit(fx.sleepy, 60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = subprocess.run(["squeue", "-h", "-o", "%T", "-j", fut.engine_id],
                               capture_output=True, text=True).stdout.strip()  # fmt: skip
        if state == "RUNNING":
            break
        time.sleep(0.2)
    time.sleep(1.0)  # Submitit's signal handlers are set once the job's Python runs
    subprocess.run(["scancel", "--signal", "USR2", fut.engine_id], check=True)
    with pytest.raises(hetfaas.JobFailed) as info:
        fut.result(timeout=120)
    assert info.value.job_id == fut.engine_id
