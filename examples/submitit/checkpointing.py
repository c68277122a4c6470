import os
import pickle
import sys
import time
from pathlib import Path

from hetfaas import submitit  # was: import submitit


class Training(submitit.helpers.Checkpointable):
    """Trains for `steps` steps of 0.1 s; its state (the step reached) survives requeues."""

    def __init__(self):
        self.step = 0
        self.starts = []

    def __call__(self, checkpointpath, steps):
        if Path(checkpointpath).exists():  # resumed: load what the checkpoint saved
            with open(checkpointpath, "rb") as f:
                self.step = pickle.load(f)
        self.starts.append(self.step)
        print(f"starting at step {self.step}", flush=True)
        while self.step < steps:
            time.sleep(0.1)
            self.step += 1
        return self.step, self.starts

    def checkpoint(self, checkpointpath, steps):
        with open(checkpointpath, "wb") as f:
            pickle.dump(self.step, f)
        resumed = Training()
        resumed.starts = self.starts
        return submitit.helpers.DelayedSubmission(resumed, checkpointpath, steps)


def main():
    folder = os.environ.get("EXAMPLE_FOLDER", "log_test")
    executor = submitit.AutoExecutor(
        folder=folder, cluster=os.environ.get("EXAMPLE_CLUSTER"), slurm_max_num_timeout=3
    )
    path = os.path.join(folder, "training.ckpt")
    if os.path.exists(path):
        os.remove(path)
    if executor.cluster == "slurm":  # Slurm limits are whole minutes: interrupt it instead
        executor.update_parameters(timeout_min=5, slurm_partition="debug")
        job = executor.submit(Training(), path, 40)
        while not os.path.exists(job.paths.stdout) or "starting" not in job.stdout():
            time.sleep(0.1)
        time.sleep(1.5)
        job._interrupt()  # what Slurm sends before a time limit
    else:
        executor.update_parameters(timeout_min=0.02)  # a 1.2 s limit
        job = executor.submit(Training(), path, 20)
    steps, starts = job.result()
    print(steps, starts)
    assert steps in (20, 40) and len(starts) >= 2 and starts[0] == 0 and starts[1] > 0
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
