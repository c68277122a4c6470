"""helpers, JobEnvironment and core.utils of the Submitit surface, without a cluster."""

from __future__ import annotations

import os

import pytest

from hetfaas import submitit
from hetfaas.submitit._environment import task_variables, variables
from hetfaas.submitit.core.utils import DelayedSubmission, FailedJobError

from . import funcs as fx


def test_command_function_returns_stdout_and_fails_clearly(capsys):
    assert submitit.helpers.CommandFunction(["echo", "hi"], verbose=False)() == "hi"
    cmd = submitit.helpers.CommandFunction(["sh", "-c", 'echo "$0 $1"'], verbose=False)
    assert cmd("a", "--x=1") == "a --x=1"
    assert submitit.helpers.CommandFunction(["echo"], verbose=False)(1, k="v") == "1 --k=v"
    with pytest.raises(FailedJobError, match="nope") as info:
        submitit.helpers.CommandFunction(["sh", "-c", "echo nope >&2; exit 3"], verbose=False)()
    assert info.value.__cause__.returncode == 3
    with pytest.raises(TypeError, match="list"):
        submitit.helpers.CommandFunction("echo hi")  # type: ignore[arg-type]
    submitit.helpers.CommandFunction(["echo", "shown"])()
    assert "running: echo shown" in capsys.readouterr().out


def test_command_function_cwd_and_env(tmp_path):
    env = {"FOO": "bar", "PATH": "/usr/bin:/bin"}
    cmd = submitit.helpers.CommandFunction(
        ["sh", "-c", "pwd; echo $FOO"], verbose=False, cwd=tmp_path, env=env
    )
    assert cmd().splitlines() == [str(tmp_path), "bar"]


def test_function_sequence_keeps_computed_results():
    seq = submitit.helpers.FunctionSequence()
    seq.add(fx.add, 1, 2)
    seq.add(fx.add, a=3, b=4)
    assert len(seq) == 2 and seq() == [3, 7]
    assert all(d.done() for d in seq)
    delayed = seq.checkpoint()
    assert isinstance(delayed, DelayedSubmission) and delayed.function is seq


def test_checkpointable_needs_a_call():
    class NoCall(submitit.helpers.Checkpointable):
        pass

    with pytest.raises(TypeError, match="no __call__"):
        NoCall()


def test_job_environment_outside_and_inside_a_job(tmp_path):
    with submitit.helpers.clean_env(), pytest.raises(RuntimeError, match="inside a running job"):
        submitit.JobEnvironment()
    env = task_variables("local-1-2_3", tmp_path, rank=3, tasks_per_node=2, nodes=2,
                         array=("local-1-2", 3))  # fmt: skip
    with variables(env):
        je = submitit.JobEnvironment()
        assert (je.job_id, je.array_job_id, je.array_task_id) == ("local-1-2_3", "local-1-2", "3")
        assert (je.global_rank, je.local_rank, je.node, je.num_nodes, je.num_tasks) == (
            3, 1, 1, 2, 4)  # fmt: skip
        assert je.hostnames == [je.hostname] * 2 and "global_rank=3(4)" in repr(je)
    assert "HETFAAS_JOB_ID" not in os.environ


def test_job_environment_reads_slurm_variables(monkeypatch):
    with submitit.helpers.clean_env():
        for k, v in {"SLURM_JOB_ID": "42", "SLURM_PROCID": "3", "SLURM_LOCALID": "1",
                     "SLURM_NTASKS": "4", "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1",
                     "SLURM_JOB_NODELIST": "n[1-2]"}.items():  # fmt: skip
            monkeypatch.setenv(k, v)
        je = submitit.JobEnvironment()
        assert je.cluster == "slurm" and je.job_id == "42"
        assert (je.global_rank, je.local_rank, je.num_tasks, je.node) == (3, 1, 4, 1)
        assert je.hostnames == ["n1", "n2"]
        dist = submitit.helpers.TorchDistributedEnvironment()
        assert dist.master_addr == "n1" and 20000 <= dist.master_port <= 60000
        assert dist.master_port == submitit.helpers.TorchDistributedEnvironment().master_port
        assert (dist.rank, dist.world_size, dist.local_rank, dist.local_world_size) == (3, 4, 1, 2)


def test_clean_env_hides_and_restores(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("MASTER_PORT", "1234")
    monkeypatch.setenv("MY_CACHE", "x")
    with submitit.helpers.clean_env(extra_names=["MY_CACHE"]):
        assert not {"SLURM_JOB_ID", "MASTER_PORT", "MY_CACHE"} & set(os.environ)
    assert os.environ["SLURM_JOB_ID"] == "7" and os.environ["MY_CACHE"] == "x"


def test_torch_distributed_export_refuses_to_overwrite(tmp_path, monkeypatch):
    env = task_variables("local-9-9", tmp_path, rank=1, tasks_per_node=2, master_port=29511)
    with submitit.helpers.clean_env(), variables(env):
        dist = submitit.helpers.TorchDistributedEnvironment().export()
        try:
            assert os.environ["MASTER_ADDR"] == "127.0.0.1"
            assert (os.environ["MASTER_PORT"], os.environ["RANK"]) == ("29511", "1")
            assert (os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("2", "1")
            with pytest.raises(RuntimeError, match="already set"):
                dist.export()
            dist.export(overwrite=True)
        finally:
            for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                      "LOCAL_WORLD_SIZE"):  # fmt: skip
                os.environ.pop(k, None)


def test_delayed_submission_runs_once():
    calls = []
    d = DelayedSubmission(lambda x: calls.append(x) or x * 2, 4)
    assert not d.done() and d.result() == 8 and d.result() == 8 and calls == [4]
    assert "DelayedSubmission(" in repr(d)


def test_public_names_of_submitits_documented_api():
    for name in ("AutoExecutor", "LocalExecutor", "SlurmExecutor", "DebugExecutor", "Executor",
                 "Job", "DebugJob", "JobEnvironment", "helpers", "core"):  # fmt: skip
        assert hasattr(submitit, name), name
    helpers = ["DelayedSubmission", "Checkpointable", "CommandFunction", "FunctionSequence"]
    helpers += ["as_completed", "TorchDistributedEnvironment", "clean_env", "monitor_jobs"]
    for name in helpers:
        assert hasattr(submitit.helpers, name), name
    assert submitit.core.utils.FailedJobError and submitit.core.utils.UncompletedJobError
