import os
import pathlib
import shutil
import subprocess

import pytest

import hetfaas

ROOT = pathlib.Path(__file__).resolve().parents[1]


def start_slurm() -> None:
    """Bring up the single-node Slurm of scripts/slurm-up (a test skips where it cannot)."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("starting Slurm daemons here needs root and apt-get")
    pytest.importorskip("submitit")
    proc = subprocess.run([str(ROOT / "scripts" / "slurm-up")], capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture
def ex():
    """A fresh local pool per test; shut down after, leaving no process behind."""
    executor = hetfaas.Executor()
    yield executor
    executor.shutdown(wait=False, cancel_futures=True)


CORES = len(os.sched_getaffinity(0))


def thread_switches(thread) -> int:
    """How often ``thread`` of this process went to sleep so far (the kernel's count)."""
    with open(f"/proc/self/task/{thread.native_id}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches line")
