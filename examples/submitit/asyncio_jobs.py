import asyncio
import os
import time

from hetfaas import submitit  # was: import submitit


def slow_multiplication(x, y):
    time.sleep(x * y / 10)
    return x * y


async def main(executor):
    job = executor.submit(slow_multiplication, 2, 1)
    assert await job.awaitable().result() == 2
    jobs = [executor.submit(slow_multiplication, k, 5 - k) for k in (1, 4)]  # 0.4 s, 0.4 s
    results = [await aws for aws in asyncio.as_completed([j.awaitable().result() for j in jobs])]
    assert sorted(results) == [4, 4]
    jobs = [executor.submit(slow_multiplication, k, 1) for k in (30, 1)]
    first = next(iter(submitit.helpers.as_completed(jobs, poll_frequency=0.1)))
    assert first.result() == 1  # the short one came back first


folder = os.environ.get("EXAMPLE_FOLDER", "log_test")
executor = submitit.AutoExecutor(folder=folder, cluster=os.environ.get("EXAMPLE_CLUSTER"))
executor.update_parameters(timeout_min=1, slurm_partition="debug")
asyncio.run(main(executor))
print("OK")
