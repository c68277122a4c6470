"""The mpi:// channel under a real ``mpirun`` (OpenMPI, mpi4py): every collective of the
Communicator maps onto MPI's, and a rank that never arrives ends in a named timeout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hetfaas.collectives import open_channel
from hetfaas.exceptions import ConfigurationError

SCRIPT = Path(__file__).with_name("mpi_ranks.py")

try:
    import mpi4py  # noqa: F401
except ImportError:  # the collectives extra is part of dev; CI installs it
    pytest.skip(
        "mpi4py is not installed (pip install 'hetfaas[collectives]')", allow_module_level=True
    )
if shutil.which("mpirun") is None:
    pytest.skip("no mpirun (apt-get install openmpi-bin libopenmpi-dev)", allow_module_level=True)


def mpirun(out: Path, np_: int, *args: str, timeout: int = 90) -> list[str]:
    """Each rank's report (``OK <rank> ...``), in rank order."""
    cmd = ["timeout", str(timeout), "mpirun", "--allow-run-as-root", "--oversubscribe",
           "-np", str(np_), sys.executable, str(SCRIPT), str(out), *args]  # fmt: skip
    env = dict(os.environ, OMPI_MCA_rmaps_base_oversubscribe="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout + 10)
    assert proc.returncode == 0, f"mpirun failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return [(out / str(r)).read_text() if (out / str(r)).exists() else "" for r in range(np_)]


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7])
def test_every_collective_over_mpi(size, tmp_path):
    assert mpirun(tmp_path, size, "contract") == [f"OK {r}" for r in range(size)]


def test_absent_rank_is_named_and_nothing_hangs(tmp_path):
    t0 = time.monotonic()
    reports = mpirun(tmp_path, 3, "absent", "2")
    assert reports[2] == "OK 2"
    for rank in (0, 1):
        assert reports[rank].startswith(f"OK {rank} ") and "missing ranks: 2" in reports[rank]
    assert time.monotonic() - t0 < 80


def test_uri_and_group_errors(tmp_path):
    with pytest.raises(ConfigurationError, match="takes no host"):
        open_channel("mpi://somehost:1234")
    # MPI in a subprocess: initializing it here would leave it in the test process
    cmd = [sys.executable, str(SCRIPT), str(tmp_path), "solo"]
    subprocess.run(cmd, check=True, timeout=60, capture_output=True)
    report = (tmp_path / "0").read_text()
    assert "MPI's world" in report and "rank 0 of 2" in report
