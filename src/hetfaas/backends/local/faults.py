"""What the local pool decides when a worker dies: pure functions of what it knows.

A worker runs the calls of a message in order and writes the seq of the one it runs into its
control slot before it starts it, so after a death the pool can tell, for the calls it had
sent to that worker and not yet heard back from:

- the calls before the one running had finished, but their replies were lost with the
  worker: they fail (:class:`~hetfaas.exceptions.WorkerDied`), since running them again
  would run them twice;
- the call running fails (WorkerDied, or CallTimeout/CallCancelled when the pool killed it);
- the calls after it never began: they go back to the front of the queue and run on another
  worker, as if nothing happened.

When the slot names no call still in flight (the worker was between calls, or the call it
names was already answered), none of the calls in flight began: all of them go back.

A worker that dies before it is ready has begun no call: its calls go back too, and the pool
starts another. Only a pool whose workers keep failing to start by themselves (a broken
environment, a preload that raises) gives up and fails the waiting calls, so nothing waits
forever; deaths by a signal (killed from outside) are retried far longer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

MAX_START_EXITS = 3  # workers that exit by themselves before ready, in a row: give up
MAX_START_KILLS = 50  # workers killed by a signal before ready, in a row: give up


class DeadWorkerCalls(NamedTuple):
    """How the calls a dead worker had in flight end (see the module docstring)."""

    finished: list[Any]  # ran; their replies were lost
    running: Any  # the call it was running, or None
    requeue: list[Any]  # never began


def split_dead_calls(
    inflight: Sequence[Any], seqs: Sequence[int], running_seq: int
) -> DeadWorkerCalls:
    """Split ``inflight`` (in the order sent, ``seqs`` their call numbers) by the seq the
    dead worker's control slot holds."""
    try:
        at = list(seqs).index(running_seq) if running_seq else -1
    except ValueError:
        at = -1
    if at < 0:
        return DeadWorkerCalls([], None, list(inflight))
    return DeadWorkerCalls(list(inflight[:at]), inflight[at], list(inflight[at + 1 :]))


def give_up_starting(exits_in_a_row: int, kills_in_a_row: int) -> bool:
    """Whether the pool stops starting workers for the waiting calls and fails them."""
    return exits_in_a_row >= MAX_START_EXITS or kills_in_a_row >= MAX_START_KILLS


__all__ = ["DeadWorkerCalls", "give_up_starting", "split_dead_calls"]
