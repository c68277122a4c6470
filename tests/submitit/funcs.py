"""Functions the Submitit-surface tests submit (importable by workers and Slurm jobs)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from hetfaas import submitit


def add(a: int, b: int) -> int:
    return a + b


def chatty(x: int) -> int:
    print(f"hello {x}", flush=True)
    import sys

    print(f"warn {x}", file=sys.stderr, flush=True)
    return x


class Unusual(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}/{b}")
        self.a, self.b = a, b


def raise_unusual(a: int, b: int) -> None:
    raise Unusual(a, b)


def where() -> dict[str, object]:
    """This task's JobEnvironment, as a dict."""
    env = submitit.JobEnvironment()
    return {
        "job_id": env.job_id,
        "global_rank": env.global_rank,
        "local_rank": env.local_rank,
        "num_tasks": env.num_tasks,
        "num_nodes": env.num_nodes,
        "node": env.node,
        "hostname": env.hostname,
        "cluster": env.cluster,
        "pid": os.getpid(),
    }


def rank_or_fail(bad: int) -> int:
    rank = submitit.JobEnvironment().global_rank
    print(f"task {rank}", flush=True)
    if rank == bad:
        raise ValueError(f"rank {rank} fails")
    return rank


def running_with(folder: str, name: str, seconds: float) -> float:
    """Write ``<name>.start``/``.end`` stamps around a sleep (to count what ran at once)."""
    Path(folder, f"{name}.start").write_text(repr(time.time()))
    time.sleep(seconds)
    Path(folder, f"{name}.end").write_text(repr(time.time()))
    return seconds


def one_at_a_time(folder: str, names: list[str]) -> bool:
    """Whether the ``running_with`` calls named ``names`` never overlapped."""
    spans = sorted(
        (float(Path(folder, f"{n}.start").read_text()), float(Path(folder, f"{n}.end").read_text()))
        for n in names
    )
    return all(spans[i][1] <= spans[i + 1][0] for i in range(len(spans) - 1))


def gloo_allreduce() -> tuple[int, int, float]:
    """Join the job's tasks with torch.distributed (gloo) and allreduce the ranks."""
    import torch
    import torch.distributed as dist

    env = submitit.helpers.TorchDistributedEnvironment().export(overwrite=True)
    dist.init_process_group("gloo", timeout=__import__("datetime").timedelta(seconds=60))
    try:
        t = torch.tensor([float(env.rank)])
        dist.all_reduce(t)
        return dist.get_rank(), dist.get_world_size(), float(t.item())
    finally:
        dist.destroy_process_group()


class Countdown(submitit.helpers.Checkpointable):
    """Counts steps of 0.1 s; its progress is its state, kept across requeues."""

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.done = 0
        self.runs = 0

    def __call__(self, steps: int) -> tuple[int, int]:
        self.runs += 1
        with open(self.marker, "a") as f:
            f.write(f"run {self.runs} from step {self.done}\n")
        while self.done < steps:
            time.sleep(0.1)
            self.done += 1
        return self.done, self.runs


class Declines(Countdown):
    """A checkpointable call whose checkpoint declines a requeue."""

    def checkpoint(self, *args: object, **kwargs: object) -> None:
        return None
