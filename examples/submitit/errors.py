import os
from operator import truediv

from hetfaas import submitit  # was: import submitit

folder = os.environ.get("EXAMPLE_FOLDER", "log_test")
executor = submitit.AutoExecutor(folder=folder, cluster=os.environ.get("EXAMPLE_CLUSTER"))
executor.update_parameters(timeout_min=1, slurm_partition="debug")
job = executor.submit(truediv, 1, 0)
try:
    job.result()
except submitit.core.utils.FailedJobError as error:
    assert "ZeroDivisionError" in str(error)
else:
    raise AssertionError("truediv(1, 0) did not fail")
assert "ZeroDivisionError" in job.stderr()
print("OK")
