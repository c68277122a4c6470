"""AutoExecutor: the README's example unchanged but for the import; Slurm picked when it answers."""

import pathlib
import subprocess
import sys

import pytest

import hetfaas
from hetfaas import submitit

from .. import pool_funcs as fx
from ..conftest import start_slurm

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_example_runs_unchanged_but_for_the_import(tmp_path):
    src = (ROOT / "examples" / "example.py").read_text()
    assert "from hetfaas import submitit" in src and "\nimport submitit" not in src
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "example.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().splitlines()[-1]
    # Slurm's job id when a Slurm cluster answers here (as Submitit's AutoExecutor), else ours
    assert job_id.isdigit() if submitit.slurm_reachable() else job_id.startswith("local-")
    assert (tmp_path / "log_test" / f"{job_id}_0_log.out").exists()


def test_auto_executor_picks_slurm_when_it_answers(tmp_path):
    start_slurm()
    assert submitit.slurm_reachable()
    with submitit.AutoExecutor(folder=tmp_path) as executor:
        assert executor.cluster == "slurm"
        executor.update_parameters(timeout_min=1, slurm_partition="debug")
        job = executor.submit(fx.chatty, 3)
        assert job.result() == 3 and job.state == "COMPLETED"
        assert job.job_id.isdigit() and job.job_id == job.future.engine_id
        assert "hello 3" in job.stdout()
        assert job.paths.stdout == tmp_path / f"{job.job_id}_0_log.out"
        jobs = executor.map_array(fx.add, [1, 2], [10, 20])
        assert [j.result() for j in jobs] == [11, 22]
        assert all("_" in j.job_id for j in jobs)  # tasks of one Slurm job array
        executor.update_parameters(slurm_partition="no-such-partition")
        with pytest.raises(hetfaas.EngineError, match=r"no-such-partition|partition"):
            executor.submit(fx.add, 1, 1)
