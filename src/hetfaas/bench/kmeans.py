"""``hetfaas bench kmeans``: LambdaML-style k-means over each channel (being written)."""

from __future__ import annotations

import argparse

from ..exceptions import ConfigurationError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a small run")


def run(args: argparse.Namespace) -> int:
    raise ConfigurationError("hetfaas bench kmeans is not available in this build yet")
