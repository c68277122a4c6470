"""What calls and commands use: CPU, memory, GPUs over time, and efficiencies (seed 002).

- :class:`Sampler`: a process tree sampled every ``interval_s`` (default 1 s, down to 50 ms);
- :func:`usage_of` / :class:`Usage`: CPU and memory efficiency, GPU utilisation, advice;
- :func:`monitor_command`: any command run bare metal under the sampler, written as CSV, the
  four plots and a summary (``hetfaas monitor [--interval S] [--out DIR] -- CMD ...``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .report import monitor_command, plot, read_csv, summary_text, write_csv
from .sampler import MIN_INTERVAL_S, Sample, Sampler
from .summary import Usage, advise, usage_of


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--interval", type=float, default=1.0, metavar="S",
                   help=f"seconds between samples (1; at least {MIN_INTERVAL_S})")  # fmt: skip
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="write samples.csv, usage.png and summary.md there")  # fmt: skip
    p.add_argument("--cpus", type=int, default=None, help="cores requested (default: all)")
    p.add_argument("--mem-gb", type=float, default=None, help="memory requested, GiB")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")


def run(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print("hetfaas monitor: give the command after --", file=sys.stderr)
        return 2
    mem = args.mem_gb * 1024 if args.mem_gb else None
    code, usage, sampler = monitor_command(command, args.interval, args.out, args.cpus, mem)
    print(summary_text(usage, sampler, " ".join(command), code), end="", file=sys.stderr)
    return code


__all__ = ["MIN_INTERVAL_S", "Sample", "Sampler", "Usage", "add_arguments", "advise",
           "monitor_command", "plot", "read_csv", "run", "summary_text", "usage_of",
           "write_csv"]  # fmt: skip
