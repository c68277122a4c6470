"""scripts/slurm-up brings up a real one-node Slurm (with accounting and fake GPUs).

The module fixture runs ``scripts/slurm-up`` (installing Debian's packages the first time)
and leaves the cluster running afterwards, for other tests. Skipped only where it cannot
work at all: not root, or no ``apt-get``. Every wait here has a deadline.
"""

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SLURM_UP = ROOT / "scripts" / "slurm-up"
STATE_DIR = Path("/var/lib/hetfaas-slurm")

TERMINAL = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
}

if os.geteuid() != 0:
    pytestmark = pytest.mark.skip(reason="slurm-up needs root (installs packages, starts daemons)")
elif shutil.which("apt-get") is None:
    pytestmark = pytest.mark.skip(reason="slurm-up needs apt-get (Debian) to install Slurm")


def _run(cmd, timeout=60, check=True):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{cmd} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


@pytest.fixture(scope="module")
def slurm():
    """Run scripts/slurm-up; return its summary line. Leaves Slurm running on purpose."""
    proc = _run([str(SLURM_UP)], timeout=900)
    line = proc.stdout.strip().splitlines()[-1]
    m = re.fullmatch(
        r"slurm up: node (\S+), (\d+) cpus, (\d+) MB, gres (\S+), partition (\S+)", line
    )
    assert m, f"unexpected slurm-up output: {proc.stdout!r}"
    return {"host": m[1], "cpus": int(m[2]), "mem_mb": int(m[3]), "gres": m[4], "part": m[5]}


def sbatch(*args):
    out = _run(["sbatch", "--parsable", *args]).stdout.strip()
    return out.split(";")[0]


def sacct_states(job_id):
    """{job id or array task id: state} for the allocation records of a job."""
    out = _run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "JobID,State"]).stdout
    states = {}
    for row in out.splitlines():
        if "|" in row:
            jid, state = row.split("|", 1)
            states[jid] = state.split()[0] if state.strip() else ""
    return states


def wait_terminal(job_id, n_tasks=1, deadline_s=120.0):
    """Wait until sacct shows n_tasks records of the job, all ended; return their states."""
    deadline = time.monotonic() + deadline_s
    states = {}
    while time.monotonic() < deadline:
        states = sacct_states(job_id)
        # An array not yet split into tasks shows one "ID_[0-2]" record: keep waiting.
        done = {k: v for k, v in states.items() if "[" not in k}
        if len(done) >= n_tasks and all(v in TERMINAL for v in done.values()):
            return done
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not finished after {deadline_s}s: {states}")


def wait_running(job_id, deadline_s=60.0):
    deadline = time.monotonic() + deadline_s
    state = ""
    while time.monotonic() < deadline:
        state = _run(["squeue", "-h", "-j", job_id, "-o", "%T"], check=False).stdout.strip()
        if state == "RUNNING":
            return
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} not running after {deadline_s}s (state {state!r})")


def node_state(host):
    return _run(["sinfo", "-h", "-n", host, "-o", "%T"]).stdout.strip()


def test_node_is_up(slurm):
    assert slurm["part"] == "debug"
    assert slurm["gres"] == "gpu:2"
    assert slurm["cpus"] >= 1
    assert node_state(slurm["host"]) in {"idle", "mixed", "allocated", "completing"}
    clusters = _run(["sacctmgr", "-n", "-P", "list", "cluster", "format=cluster"]).stdout
    assert "hetfaas" in clusters.split()


def test_batch_job_writes_output(slurm, tmp_path):
    out = tmp_path / "job.out"
    job = sbatch("-o", str(out), "--wrap", "echo hello-from-slurm; hostname")
    assert wait_terminal(job) == {job: "COMPLETED"}
    lines = out.read_text().split()
    assert lines[0] == "hello-from-slurm"
    assert lines[1] == slurm["host"]


def test_job_array_of_three(slurm, tmp_path):
    pattern = str(tmp_path / "task_%a.out")
    job = sbatch("--array=0-2", "-o", pattern, "--wrap", 'echo "task $SLURM_ARRAY_TASK_ID"')
    states = wait_terminal(job, n_tasks=3)
    assert sorted(states) == [f"{job}_{i}" for i in range(3)]
    assert set(states.values()) == {"COMPLETED"}
    for i in range(3):
        assert (tmp_path / f"task_{i}.out").read_text().strip() == f"task {i}"


def test_gres_gpu_sets_cuda_visible_devices(slurm, tmp_path):
    one = _run(["srun", "--gres=gpu:1", "printenv", "CUDA_VISIBLE_DEVICES"], timeout=120)
    assert one.stdout.strip() in {"0", "1"}
    out = tmp_path / "gpus.out"
    job = sbatch("--gres=gpu:2", "-o", str(out), "--wrap", "printenv CUDA_VISIBLE_DEVICES")
    assert wait_terminal(job) == {job: "COMPLETED"}
    assert out.read_text().strip() == "0,1"


def test_scancel_ends_cancelled(slurm):
    job = sbatch("-o", "/dev/null", "--wrap", "sleep 300")
    wait_running(job)
    _run(["scancel", job])
    assert wait_terminal(job, deadline_s=60) == {job: "CANCELLED"}


@pytest.mark.slow
def test_time_limit_ends_timeout(slurm):
    # Slurm's time limits are in minutes and checked periodically: this takes ~60-90 s.
    job = sbatch("--time=0:01", "-o", "/dev/null", "--wrap", "sleep 600")
    wait_running(job)
    assert wait_terminal(job, deadline_s=240) == {job: "TIMEOUT"}


def _daemon_pids():
    pids = {}
    for name in ("slurmctld", "slurmd", "slurmdbd"):
        f = STATE_DIR / "run" / f"{name}.pid"
        pids[name] = f.read_text().strip() if f.exists() else None
    return pids


def test_second_slurm_up_is_fast_and_keeps_node_up(slurm):
    before = _daemon_pids()
    t0 = time.monotonic()
    proc = _run([str(SLURM_UP)], timeout=120)
    elapsed = time.monotonic() - t0
    assert proc.stdout.strip().splitlines()[-1].startswith(f"slurm up: node {slurm['host']},")
    assert elapsed < 10, f"second slurm-up took {elapsed:.1f}s"
    assert _daemon_pids() == before  # nothing was restarted
    # Other tests may share the node, so it can be partly allocated; it must not be down.
    assert node_state(slurm["host"]) in {"idle", "mixed", "allocated", "completing"}
    job = sbatch("-o", "/dev/null", "--wrap", "true")
    assert wait_terminal(job) == {job: "COMPLETED"}
