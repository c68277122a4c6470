import os
import time

from hetfaas import submitit  # was: import submitit

folder = os.environ.get("EXAMPLE_FOLDER", "log_test")
executor = submitit.AutoExecutor(folder=folder, cluster=os.environ.get("EXAMPLE_CLUSTER"))
executor.update_parameters(timeout_min=1, slurm_partition="debug")
jobs = [executor.submit(time.sleep, k / 10) for k in range(1, 5)]
time.sleep(0.05)
print(sum(job.done() for job in jobs), "done so far")
outputs = [job.result() for job in jobs]
assert outputs == [None] * 4
assert all(job.done() for job in jobs)
print("OK")
