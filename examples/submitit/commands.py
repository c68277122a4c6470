import os
import sys

from hetfaas import submitit  # was: import submitit

function = submitit.helpers.CommandFunction(["which", "python3"])
print(function())
assert submitit.helpers.CommandFunction(["echo"])("pip") == "pip"

folder = os.environ.get("EXAMPLE_FOLDER", "log_test")
executor = submitit.AutoExecutor(folder=folder, cluster=os.environ.get("EXAMPLE_CLUSTER"))
executor.update_parameters(timeout_min=1, slurm_partition="debug")
prefix = submitit.helpers.CommandFunction([sys.executable, "-c", "import sys; print(sys.prefix)"])
job = executor.submit(prefix)
assert job.result() == sys.prefix  # the job runs in this environment
print("OK")
