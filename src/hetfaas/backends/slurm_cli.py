"""Running Slurm's commands (``sinfo``, ``squeue``, ``scontrol``): the one place that does,
for the engines that use Slurm (``slurm``, ``parsl`` on a SlurmProvider, ``slurm-pilot``)."""

from __future__ import annotations

import shutil
import subprocess

from ..exceptions import ConfigurationError

NOT_INSTALLED = "Slurm is not installed here (no sbatch on PATH); start one with scripts/slurm-up"


def slurm_command(cmd: list[str], timeout_s: float = 15.0) -> str:
    """``cmd``'s standard output, stripped; ConfigurationError, naming it, when it fails."""
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigurationError(f"{' '.join(cmd)} failed: {exc}") from exc


def require_slurm(reachable: bool = True) -> None:
    """ConfigurationError unless Slurm's commands are here (and, with ``reachable``, its
    controller answers ``sinfo``)."""
    if shutil.which("sbatch") is None:
        raise ConfigurationError(NOT_INSTALLED)
    if reachable:
        try:
            slurm_command(["sinfo", "-h"])
        except ConfigurationError as exc:
            raise ConfigurationError(f"Slurm is not reachable: {exc}") from None


__all__ = ["NOT_INSTALLED", "require_slurm", "slurm_command"]
