"""Functions the pilot tests run in blocks (importable by name there, and light)."""

import os
import time
from pathlib import Path


def nap(seconds, folder=None, name=None):
    """Sleep; with ``folder``, first leave ``folder/name.start`` (so that a test sees the call
    begin). Says where and when it ran: job, pid, start and end on the wall clock."""
    t0 = time.time()
    if folder is not None:  # one line per run (a call that ran twice has two)
        with Path(folder, f"{name}.start").open("a") as f:
            f.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    return {"job": os.environ.get("SLURM_JOB_ID", ""), "pid": os.getpid(), "start": t0,
            "end": time.time(), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}  # fmt: skip


def noop():
    return None
