"""Submitit's ``core`` package: ``core.utils`` holds the errors and ``DelayedSubmission``."""

from . import utils as utils

__all__ = ["utils"]
