import os

from hetfaas import submitit  # was: import submitit


def add(a, b):
    return a + b


folder = os.environ.get("EXAMPLE_FOLDER", "log_test")
executor = submitit.AutoExecutor(folder=folder, cluster=os.environ.get("EXAMPLE_CLUSTER"))
executor.update_parameters(timeout_min=2, slurm_partition="debug", slurm_array_parallelism=2)
jobs = executor.map_array(add, [1, 2, 3, 4], [10, 20, 30, 40])
assert [job.result() for job in jobs] == [11, 22, 33, 44]
ids = [job.job_id for job in jobs]
assert len({i.split("_")[0] for i in ids}) == 1, ids  # one array: <array id>_<task>
assert [i.split("_")[1] for i in ids] == ["0", "1", "2", "3"], ids

jobs = []
with executor.batch():
    for arg in range(5):
        jobs.append(executor.submit(add, arg, arg))
assert [job.result() for job in jobs] == [0, 2, 4, 6, 8]
print("OK")
