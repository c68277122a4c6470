"""``JobEnvironment``: who this task is, inside a running job, whatever the cluster.

Inside a job of the local pool, hetfaas sets ``HETFAAS_JOB_*`` variables for the call (one
set per task of a multi-task job); inside a Slurm job, Slurm's own variables are read (the
same ones Submitit reads). Outside any job, ``JobEnvironment()`` raises ``RuntimeError``, as
Submitit's does.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path

# name -> (hetfaas local variable, Slurm variable)
_VARS = {
    "job_id": ("HETFAAS_JOB_ID", "SLURM_JOB_ID"),
    "array_job_id": ("HETFAAS_JOB_ARRAY_JOB_ID", "SLURM_ARRAY_JOB_ID"),
    "array_task_id": ("HETFAAS_JOB_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_ID"),
    "num_tasks": ("HETFAAS_JOB_NUM_TASKS", "SLURM_NTASKS"),
    "num_nodes": ("HETFAAS_JOB_NUM_NODES", "SLURM_JOB_NUM_NODES"),
    "node": ("HETFAAS_JOB_NODE", "SLURM_NODEID"),
    "global_rank": ("HETFAAS_JOB_GLOBAL_RANK", "SLURM_PROCID"),
    "local_rank": ("HETFAAS_JOB_LOCAL_RANK", "SLURM_LOCALID"),
    "folder": ("HETFAAS_JOB_FOLDER", "SUBMITIT_FOLDER"),
    "cluster": ("HETFAAS_JOB_CLUSTER", ""),
}
MASTER_PORT = "HETFAAS_JOB_MASTER_PORT"  # the local tasks' rendezvous port (torch.distributed)


def task_variables(
    job_id: str,
    folder: Path,
    rank: int = 0,
    tasks_per_node: int = 1,
    nodes: int = 1,
    cluster: str = "local",
    array: tuple[str, int] | None = None,
    master_port: int | None = None,
) -> dict[str, str]:
    """The variables a task of a local job runs with (a multi-node job's nodes simulated:
    task ``rank`` is on node ``rank // tasks_per_node``)."""
    values = {
        "job_id": job_id,
        "num_tasks": str(tasks_per_node * nodes),
        "num_nodes": str(nodes),
        "node": str(rank // tasks_per_node),
        "global_rank": str(rank),
        "local_rank": str(rank % tasks_per_node),
        "folder": str(folder),
        "cluster": cluster,
    }
    if array is not None:
        values["array_job_id"], values["array_task_id"] = array[0], str(array[1])
    out = {_VARS[k][0]: v for k, v in values.items()}
    if master_port is not None:
        out[MASTER_PORT] = str(master_port)
    return out


@contextlib.contextmanager
def variables(env: Mapping[str, str]) -> Iterator[None]:
    """Set ``env`` in ``os.environ`` for the duration of a call, then restore it."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class JobEnvironment:
    """The running job's description: ``job_id``, ``global_rank``, ``local_rank``,
    ``num_tasks``, ``num_nodes``, ``node``, ``hostname``, ``hostnames``, ``cluster``."""

    def __init__(self) -> None:
        if _VARS["job_id"][0] in os.environ:
            self._which = 0
            self.cluster = os.environ.get(_VARS["cluster"][0], "local")
        elif _VARS["job_id"][1] in os.environ:
            self._which = 1
            self.cluster = "slurm"
        else:
            raise RuntimeError(
                "JobEnvironment() works only inside a running job (a call submitted through "
                "hetfaas.submitit, or a Slurm job); none was found in this process"
            )

    def _get(self, name: str, default: str | None = None) -> str | None:
        key = _VARS[name][self._which]
        return os.environ.get(key, default) if key else default

    def _int(self, name: str, default: int) -> int:
        return int(self._get(name) or default)

    def activated(self) -> bool:
        return True

    @property
    def raw_job_id(self) -> str:
        return str(self._get("job_id"))

    @property
    def array_job_id(self) -> str | None:
        return self._get("array_job_id")

    @property
    def array_task_id(self) -> str | None:
        return self._get("array_task_id")

    @property
    def job_id(self) -> str:
        """``<array job id>_<task id>`` in an array, else the job's id (Submitit's form)."""
        if self.array_job_id is not None:
            return f"{self.array_job_id}_{self.array_task_id}"
        return self.raw_job_id

    @property
    def num_tasks(self) -> int:
        return self._int("num_tasks", 1)

    @property
    def num_nodes(self) -> int:
        return self._int("num_nodes", 1)

    @property
    def node(self) -> int:
        return self._int("node", 0)

    @property
    def global_rank(self) -> int:
        return self._int("global_rank", 0)

    @property
    def local_rank(self) -> int:
        return self._int("local_rank", 0)

    @property
    def hostname(self) -> str:
        return socket.gethostname()

    @property
    def hostnames(self) -> list[str]:
        """The job's nodes: Slurm's node list, expanded; locally this host once per node."""
        if self._which == 1:
            from ..backends.slurm_info import expand_hostlist

            nodelist = os.environ.get("SLURM_JOB_NODELIST", "")
            return expand_hostlist(nodelist) if nodelist else [self.hostname]
        return [self.hostname] * self.num_nodes

    @property
    def folder(self) -> Path | None:
        value = self._get("folder")
        return Path(value) if value else None

    def __repr__(self) -> str:
        return (
            f"JobEnvironment(job_id={self.job_id}, hostname={self.hostname}, "
            f"local_rank={self.local_rank}({self.num_tasks // max(1, self.num_nodes)}), "
            f"node={self.node}({self.num_nodes}), global_rank={self.global_rank}"
            f"({self.num_tasks}))"
        )


__all__ = ["MASTER_PORT", "JobEnvironment", "task_variables", "variables"]
