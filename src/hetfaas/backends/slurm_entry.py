"""What a Slurm job of the ``slurm`` backend runs: Submitit's job runner, minus its wait.

Submitit submits a job first and then moves the call's pickle to the name that carries the
new job id; its runner, when the pickle is not there yet, sleeps a whole second before it looks
again. With a scheduler tuned for fast starts the job usually wins that race, so each call lost
a second. This entry point waits for the pickle at a short interval instead, then hands over to
Submitit's own ``process_job`` (signals, checkpointing and result files are Submitit's).

Run as ``python -u -m hetfaas.backends.slurm_entry -u -m submitit.core._submit FOLDER`` (the
backend passes it as Submitit's ``python`` command, which Submitit completes).
"""

from __future__ import annotations

import os
import sys
import time

_WAIT_S = 60.0  # as long as Submitit's own runner waits


def main(argv: list[str]) -> None:
    folder = argv[-1]
    os.environ["SUBMITIT_FOLDER"] = folder
    from submitit.core import job_environment, submission

    path = job_environment.JobEnvironment().paths.submitted_pickle
    deadline = time.monotonic() + _WAIT_S
    delay = 0.002
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(delay)
        delay = min(0.05, delay * 1.5)
    submission.process_job(folder)


if __name__ == "__main__":
    main(sys.argv)
