"""``hetfaas``: the command line.

``hetfaas bench bmm|overhead|collectives|kmeans|inference|chaos|submitit|elastic|pilot|gateway|``
``elastic-train|multitask|ensemble``,
``hetfaas monitor [--interval S] [--out DIR] -- CMD``, ``hetfaas serve``, ``hetfaas token``,
``hetfaas rendezvous``, ``hetfaas advise pkg.mod:fn --args-shape ...``, ``hetfaas info``."""

from __future__ import annotations

import argparse
import importlib
import sys

from .exceptions import HetfaasError

_BENCHES = {
    "bmm": ("hetfaas.bench.bmm", "the batched-matmul serverless study (seed 000): four tables"),
    "overhead": ("hetfaas.bench.overhead", "per-call overhead vs a raw pipe and ProcessPool"),
    "collectives": ("hetfaas.bench.collectives", "collectives: channels vs raw TCP/Redis/S3/MPI"),
    "kmeans": ("hetfaas.bench.kmeans", "LambdaML-style k-means with an allreduce per epoch"),
    "inference": ("hetfaas.bench.inference", "GPU inference scheduling: LB, LALB, O3 (seed 004)"),
    "chaos": ("hetfaas.bench.chaos", "calls while workers are killed at random: none lost"),
    "submitit": ("hetfaas.bench.submitit_surface", "Submitit vs hetfaas.submitit, same code"),
    "elastic": ("hetfaas.bench.elastic", "an autoscaled pool vs a fixed one on a bursty trace"),
    "elastic-train": ("hetfaas.bench.elastic_train", "data-parallel SGD: one killed, one added"),
    "pilot": ("hetfaas.bench.pilot", "warm pilot blocks on Slurm vs a Slurm job per call"),
    "gateway": ("hetfaas.bench.gateway", "HTTP gateway invoke vs the local call and bare FastAPI"),
    "multitask": ("hetfaas.bench.multitask", "per-task weights: cold load vs cached vs naive"),
    "ensemble": ("hetfaas.bench.ensemble", "ensemble training: shared vs private preprocessing"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hetfaas", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="run a benchmark or study")
    benches = bench.add_subparsers(dest="bench", required=True)
    for name, (module, help_text) in _BENCHES.items():
        p = benches.add_parser(name, help=help_text)
        importlib.import_module(module).add_arguments(p)
        p.set_defaults(module=module)
    rendezvous = sub.add_parser("rendezvous", help="pair tcp:// collective peers by group")
    importlib.import_module("hetfaas.collectives.channels.rendezvous").add_arguments(rendezvous)
    rendezvous.set_defaults(module="hetfaas.collectives.channels.rendezvous")
    monitor = sub.add_parser("monitor", help="run a command bare metal under the sampler")
    importlib.import_module("hetfaas.monitor").add_arguments(monitor)
    monitor.set_defaults(module="hetfaas.monitor")
    advise = sub.add_parser("advise", help="where should a function run? 1 CPU, N CPUs or a GPU")
    importlib.import_module("hetfaas.advisor").add_arguments(advise)
    advise.set_defaults(module="hetfaas.advisor")
    serve = sub.add_parser("serve", help="the HTTP gateway: deploy and invoke functions over HTTP")
    importlib.import_module("hetfaas.gateway.cli").add_arguments(serve)
    serve.set_defaults(module="hetfaas.gateway.cli")
    token = sub.add_parser("token", help="create, list and revoke the gateway's API tokens")
    importlib.import_module("hetfaas.gateway.cli").add_token_arguments(token)
    token.set_defaults(module="hetfaas.gateway.cli")
    info = sub.add_parser("info", help="describe this machine and the local pool")
    info.set_defaults(module=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "info":
            from . import machine

            print(machine.format_markdown(machine.describe()))
            return 0
        return int(importlib.import_module(args.module).run(args) or 0)
    except HetfaasError as exc:
        print(f"hetfaas: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
