"""Collectives between functions: an FMI-style communicator over files, TCP, Redis, S3, MPI.

>>> from hetfaas.collectives import Communicator
>>> with Communicator(rank=0, size=1, group="demo") as comm:
...     comm.allreduce([1, 2])
[1, 2]
"""

from .channels.base import Channel, open_channel, register_channel
from .comm import Communicator, current
from .group import GroupSpec
from .ops import MAX, MIN, PROD, SUM, ReduceOp

__all__ = [
    "MAX",
    "MIN",
    "PROD",
    "SUM",
    "Channel",
    "Communicator",
    "GroupSpec",
    "ReduceOp",
    "current",
    "open_channel",
    "register_channel",
]
