import os

from hetfaas import submitit  # was: import submitit


def add(a, b):
    return a + b


# %j in the folder becomes each job's id
folder = os.path.join(os.environ.get("EXAMPLE_FOLDER", "log_test"), "%j")
executor = submitit.AutoExecutor(folder=folder, cluster=os.environ.get("EXAMPLE_CLUSTER"))
executor.update_parameters(timeout_min=4, slurm_partition="debug")
job = executor.submit(add, 5, 7)
print(job.job_id)
assert job.result() == 12
assert job.paths.stdout.parent.name == str(job.job_id)
print("OK")
