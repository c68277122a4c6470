"""Warm pilot pools on Slurm: ``Executor("slurm", pilot=...)`` (the ``slurm-pilot`` backend).

- :mod:`.strategy`: the :class:`Pilot` shape and the pure block-scaling decision;
- :mod:`.wire`: the per-executor secret, the HMAC handshake and the frames;
- :mod:`.launch`: blocks as Slurm batch jobs (or local processes);
- :mod:`.agent`: what a block runs: a warm local pool serving the submitter;
- :mod:`.backend`: the submitter's side (:class:`SlurmPilotBackend`).
"""

from .strategy import Pilot

__all__ = ["Pilot", "SlurmPilotBackend"]


def __getattr__(name: str) -> object:  # the backend (sockets, threads) only when asked for
    if name == "SlurmPilotBackend":
        from .backend import SlurmPilotBackend

        return SlurmPilotBackend
    raise AttributeError(name)
