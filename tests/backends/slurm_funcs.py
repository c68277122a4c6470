"""Functions the Submitit/Slurm tests run in jobs (importable by name there, and light:
a job imports this module, not the test modules and pytest)."""

import os
import time
from pathlib import Path


def marked_sleep(folder, name, seconds):
    """Sleep ``seconds`` after leaving this process's pid in ``folder/name.pid`` and a line
    per run in ``folder/name.runs`` (so that a test can kill the call's process, and count
    from inside how often a call ran)."""
    folder = Path(folder)
    with open(folder / f"{name}.runs", "a") as f:
        f.write(f"{os.getpid()}\n")
    tmp = folder / f".{name}.pid"
    tmp.write_text(str(os.getpid()))
    tmp.rename(folder / f"{name}.pid")
    time.sleep(seconds)
    return name


def timed_sleep(seconds):
    """Sleep, and say for how long on the wall clock (seen from inside the call)."""
    t0 = time.time_ns()
    time.sleep(seconds)
    return time.time_ns() - t0


def job_parameters():
    """What the engine gave this job, from its environment."""
    keys = ("SUBMITIT_LOCAL_TIMEOUT_S", "SLURM_CPUS_PER_TASK", "SLURM_JOB_ID")
    return {k: os.environ.get(k) for k in keys}
