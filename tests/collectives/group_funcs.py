"""Functions the grouped-map tests run in worker processes (importable by name)."""

import os

import numpy as np

from hetfaas.collectives import current


def allreduce_with_comm(x, comm):
    return comm.rank, comm.size, os.getpid(), comm.allreduce(np.full(3, float(x)))


def allgather_via_current(x):
    comm = current()
    return comm.allgather((comm.rank, x))


def fail_on_rank_one(x, comm):
    if comm.rank == 1:
        raise ValueError("rank 1 gives up")
    return comm.allreduce(x)


def no_group(x):
    return current()
