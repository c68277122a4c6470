import os
from math import ceil
from operator import add

from hetfaas import submitit  # was: import submitit


def process(chunk):
    return sum(chunk)


def my_func(inputs):
    job_env = submitit.JobEnvironment()
    print(f"There are {job_env.num_tasks} tasks in this job")
    print(f"I'm the task #{job_env.local_rank} on the node {job_env.node}")
    print(f"I'm the task #{job_env.global_rank} in the job")
    num_items_per_task = ceil(len(inputs) / job_env.num_tasks)
    r = job_env.global_rank
    return process(inputs[r * num_items_per_task : (r + 1) * num_items_per_task])


folder = os.environ.get("EXAMPLE_FOLDER", "log_test")
executor = submitit.AutoExecutor(folder=folder, cluster=os.environ.get("EXAMPLE_CLUSTER"))
# one node here (a single-node cluster); tasks_per_node=3, nodes=2 runs 6 tasks where there are two
executor.update_parameters(tasks_per_node=2, nodes=1, timeout_min=1, slurm_partition="debug")
job = executor.submit(add, 5, 7)
assert job.result() == [12, 12]

job = executor.submit(my_func, list(range(10)))
assert job.task(1).result() == sum(range(5, 10))
assert "I'm the task #1 in the job" in job.task(1).stdout()
assert job.result() == [sum(range(5)), sum(range(5, 10))]
assert "There are 2 tasks in this job" in job.stdout()
print("OK")
