"""The Submitit surface on the local pool (and the debug cluster): Submitit's behaviour."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

import hetfaas
from hetfaas import submitit
from hetfaas.submitit.core.utils import FailedJobError, UncompletedJobError

from . import funcs as fx


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("jobs")


@pytest.fixture(scope="module")
def executor(folder):
    with submitit.AutoExecutor(folder=folder / "%j", cluster="local") as ex:
        yield ex


def fresh(executor: submitit.AutoExecutor, **params: object) -> submitit.AutoExecutor:
    """The shared executor with only ``params`` set (tests do not leak parameters)."""
    executor.executor.parameters.clear()
    executor.executor._resources = hetfaas.Resources()
    executor.update_parameters(**{"timeout_min": 2, **params})
    return executor


def test_job_result_logs_and_folder_tags(executor, folder):
    ex = fresh(executor)
    job = ex.submit(fx.chatty, 3)
    assert job.result() == 3
    assert job.job_id.startswith("local-") and job.done() and job.state == "FINISHED"
    assert job.paths.folder == folder / job.job_id  # %j filled
    assert job.stdout() == "hello 3\n" and job.stderr() == "warn 3\n"
    assert job.paths.stdout.read_text() == "hello 3\n"
    assert job.timings.compute_us > 0 and job.future.done()
    assert job.results() == [3] and job.exception() is None
    assert job.task(0) is job
    with pytest.raises(ValueError, match="between 0 and 0"):
        job.task(1)


def test_array_folder_tags_and_missing_array(folder):
    with submitit.AutoExecutor(folder=folder / "arr" / "%A" / "%a", cluster="local") as ex:
        jobs = ex.map_array(fx.add, [1, 2, 3], [10, 20, 30])
        assert [j.result() for j in jobs] == [11, 22, 33]
        array = jobs[0].job_id.split("_")[0]
        assert [j.job_id for j in jobs] == [f"{array}_{i}" for i in range(3)]
        assert jobs[2].paths.stdout.parent == folder / "arr" / array / "2"
        with pytest.raises(hetfaas.ConfigurationError, match=r"%a.*not in an array"):
            ex.submit(fx.add, 1, 2)


def test_failed_job_raises_failed_job_error_with_the_trace(executor):
    job = fresh(executor).submit(fx.raise_unusual, 1, 2)
    with pytest.raises(FailedJobError, match=r"(?s)task=0.*Traceback.*Unusual: 1/2") as info:
        job.result()
    cause = info.value.__cause__
    assert isinstance(cause, fx.Unusual) and (cause.a, cause.b) == (1, 2)
    assert job.state == "FAILED"
    assert isinstance(job.exception(), FailedJobError)
    assert "Traceback" in job.stderr() and "raise_unusual" in job.stderr()
    assert isinstance(FailedJobError("x"), RuntimeError | hetfaas.HetfaasError)


def test_timeout_and_cancel_are_uncompleted(executor):
    ex = fresh(executor, timeout_min=0.01)  # 0.6 s
    job = ex.submit(time.sleep, 30)
    with pytest.raises(UncompletedJobError, match="has not produced any output"):
        job.result()
    assert job.state == "INTERRUPTED"
    ex = fresh(executor)
    job = ex.submit(time.sleep, 30)
    while job.state != "RUNNING":
        time.sleep(0.01)
    t0 = time.monotonic()
    assert job.cancel()
    with pytest.raises(UncompletedJobError):
        job.result()
    assert time.monotonic() - t0 < 10 and job.state == "CANCELLED"


def test_multi_task_job_runs_every_task_with_its_ranks(executor):
    ex = fresh(executor, tasks_per_node=2, nodes=2)
    job = ex.submit(fx.where)
    tasks = job.result()
    assert isinstance(tasks, list) and len(tasks) == 4 and job.num_tasks == 4
    assert [t["global_rank"] for t in tasks] == [0, 1, 2, 3]
    assert [t["local_rank"] for t in tasks] == [0, 1, 0, 1]
    assert [t["node"] for t in tasks] == [0, 0, 1, 1]
    assert {t["num_tasks"] for t in tasks} == {4} and {t["num_nodes"] for t in tasks} == {2}
    assert {t["job_id"] for t in tasks} == {job.job_id}
    assert len({t["pid"] for t in tasks}) == 4  # one process per task
    assert job.results() == tasks and job.task(2).result() == tasks[2]


def test_multi_task_logs_and_a_failing_task(executor):
    ex = fresh(executor, tasks_per_node=3)
    job = ex.submit(fx.rank_or_fail, 1)
    with pytest.raises(FailedJobError, match=r"(?s)task=1.*rank 1 fails"):
        job.result()
    assert job.task(0).result() == 0 and job.task(2).result() == 2
    with pytest.raises(FailedJobError, match="rank 1 fails"):
        job.task(1).result()
    assert job.task(2).stdout() == "task 2\n"
    assert [line for line in job.stdout().splitlines() if line] == ["task 0", "task 1", "task 2"]
    assert "ValueError: rank 1 fails" in job.task(1).stderr()


def test_tasks_run_at_once_even_beyond_the_pool_cores(executor, tmp_path):
    ex = fresh(executor, tasks_per_node=3)
    names = ["a", "b", "c"]

    job = ex.submit(_one_of_three, str(tmp_path), names, 1.0)
    job.result()
    starts = [float(Path(tmp_path, f"{n}.start").read_text()) for n in names]
    ends = [float(Path(tmp_path, f"{n}.end").read_text()) for n in names]
    assert max(starts) < min(ends)  # all three were running together


def _one_of_three(folder: str, names: list[str], seconds: float) -> float:
    rank = submitit.JobEnvironment().global_rank
    return fx.running_with(folder, names[rank], seconds)


def test_results_as_completed_of_a_multi_task_job(executor):
    ex = fresh(executor, tasks_per_node=2)
    job = ex.submit(fx.where)

    async def main() -> list[dict]:
        return [await aws for aws in job.awaitable().results_as_completed()]

    out = asyncio.run(main())
    assert sorted(o["global_rank"] for o in out) == [0, 1]
    assert asyncio.run(job.awaitable().results()) == job.result()


def test_torch_distributed_gloo_across_the_tasks_of_a_job(executor):
    pytest.importorskip("torch")
    ex = fresh(executor, tasks_per_node=2)
    out = ex.submit(fx.gloo_allreduce).result()
    assert out == [(0, 2, 1.0), (1, 2, 1.0)]


def test_array_parallelism_caps_tasks_at_once(executor, tmp_path):
    ex = fresh(executor, slurm_array_parallelism=1)
    names = [f"p{i}" for i in range(3)]
    jobs = ex.map_array(fx.running_with, [str(tmp_path)] * 3, names, [0.3] * 3)
    assert [j.result() for j in jobs] == [0.3] * 3
    assert fx.one_at_a_time(str(tmp_path), names)


def test_name_merged_logs_and_unknown_parameters(executor):
    ex = fresh(executor, name="my-job", stderr_to_stdout=True)
    job = ex.submit(fx.chatty, 5)
    assert job.result() == 5
    assert job.get_info()["JobName"] == "my-job" and job.name == "my-job"
    assert job.stdout() == "hello 5\nwarn 5\n" and job.stderr() is None
    with pytest.raises(hetfaas.ConfigurationError, match=r"timeout_minutes.*known.*timeout_min"):
        ex.update_parameters(timeout_minutes=3)
    with pytest.raises(hetfaas.ConfigurationError, match="tasks_per_node must be >= 1"):
        ex.update_parameters(tasks_per_node=0)


def test_awaitable_and_as_completed(executor):
    ex = fresh(executor)

    # both workers up first: a worker started later may pay a cold start longer than 2 s
    warm = [ex.submit(_sleep_and_return, 0.3) for _ in range(2)]
    assert [j.result() for j in warm] == [0.3, 0.3]
    jobs = []

    async def main() -> list[int]:
        first = await ex.submit(fx.add, 5, 7).awaitable().result()
        jobs[:] = [ex.submit(_sleep_and_return, s) for s in (2.0, 0.05)]
        order = [await aws for aws in asyncio.as_completed([j.awaitable().result() for j in jobs])]
        return [first, *order]

    assert asyncio.run(main()) == [12, 0.05, 2.0], [j.timings for j in jobs]
    jobs = [ex.submit(_sleep_and_return, s) for s in (0.6, 0.05)]
    t0 = time.monotonic()
    done = list(submitit.helpers.as_completed(jobs))
    assert [j.result() for j in done] == [0.05, 0.6]
    assert time.monotonic() - t0 < 5  # no 10 s poll
    with pytest.raises(TimeoutError):
        list(submitit.helpers.as_completed([ex.submit(_sleep_and_return, 5)], timeout=0.2))


def _sleep_and_return(s: float) -> float:
    time.sleep(s)
    return s


def test_checkpointable_call_is_requeued_on_its_time_limit(executor, tmp_path):
    ex = fresh(executor, timeout_min=0.02)  # 1.2 s per run
    marker = tmp_path / "runs.txt"
    job = ex.submit(fx.Countdown(str(marker)), 20)  # 2 s of work
    assert job.result() == (20, 2)
    lines = marker.read_text().splitlines()
    assert lines[0] == "run 1 from step 0"
    assert lines[1].startswith("run 2 from step ") and int(lines[1].split()[-1]) >= 8
    assert job.requeues == 1 and "checkpointing" in job.stderr()


def test_requeues_are_bounded_and_a_checkpoint_may_decline(folder, tmp_path):
    with submitit.AutoExecutor(folder=folder, cluster="local", local_max_num_timeout=1) as ex:
        ex.update_parameters(timeout_min=0.01)  # 0.6 s per run
        job = ex.submit(fx.Countdown(str(tmp_path / "a.txt")), 100)
        with pytest.raises(UncompletedJobError, match="requeued 1 times"):
            job.result()
        job = ex.submit(fx.Declines(str(tmp_path / "b.txt")), 100)
        with pytest.raises(UncompletedJobError, match="declined"):
            job.result()


def test_map_array_of_unequal_lengths_is_refused(executor):
    with pytest.raises(hetfaas.ConfigurationError, match=r"one length, got \[2, 3\]"):
        fresh(executor).map_array(fx.add, [1, 2], [1, 2, 3])


def test_batch_submits_together(executor):
    ex = fresh(executor)
    with ex.batch():
        jobs = [ex.submit(fx.add, i, i) for i in range(4)]
    assert [j.result() for j in jobs] == [0, 2, 4, 6]


def test_debug_executor_runs_in_this_process(tmp_path):
    with submitit.AutoExecutor(folder=tmp_path, cluster="debug") as ex:
        job = ex.submit(fx.where)
        assert job.state == "QUEUED"
        info = job.result()
        assert info["pid"] == os.getpid() and info["cluster"] == "debug"
        assert job.state == "DONE" and job.job_id.startswith("DEBUG_")
        bad = ex.submit(fx.raise_unusual, 3, 4)
        with pytest.raises(fx.Unusual):  # not wrapped, as Submitit's debug jobs
            bad.result()
    assert isinstance(submitit.DebugExecutor(tmp_path).submit(fx.add, 1, 2).result(), int)


def test_local_executor_and_which(tmp_path):
    with submitit.LocalExecutor(folder=tmp_path) as ex:
        assert ex.submit(fx.add, 2, 3).result() == 5
    assert submitit.AutoExecutor.which() in ("slurm", "local")
    with pytest.raises(hetfaas.ConfigurationError, match="'slurm', 'local'"):
        submitit.AutoExecutor(folder=tmp_path, cluster="pbs")
