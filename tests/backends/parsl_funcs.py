"""Functions the Parsl tests run in HTEX workers (importable by name there, and light)."""

import os


def hold_gil():
    """Run C code that holds the GIL for hours: no Python signal handler runs meanwhile."""
    return sum(range(10**13))


def job_and_pid():
    """The Slurm job this call ran in (if any) and its process."""
    return os.environ.get("SLURM_JOB_ID"), os.getpid()


def visible_devices(hold_s):
    """The devices this call's worker may use, after holding it ``hold_s`` seconds."""
    import time

    time.sleep(hold_s)
    return os.environ.get("CUDA_VISIBLE_DEVICES")
