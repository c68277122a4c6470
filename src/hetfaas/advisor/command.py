"""``hetfaas advise pkg.mod:fn --args-shape 1000x1000 1000x1000 [--sizes ...]``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..exceptions import ConfigurationError
from .api import DEFAULT_TIMEOUT_S, advise
from .inputs import parse_shape, random_args, resolve
from .measure import SETTLE_S


def _numbers(tokens: list[str] | None, kind: type, flag: str) -> list[Any] | None:
    """``["100,200", "400"]`` -> ``[100, 200, 400]`` (as ``kind``)."""
    if tokens is None:
        return None
    out = []
    for token in tokens:
        for part in token.split(","):
            if not part.strip():
                continue
            try:
                out.append(kind(part))
            except ValueError:
                raise ConfigurationError(f"{flag} {part!r}: expected a {kind.__name__}") from None
    return out


def _default_array() -> str:
    try:
        import torch  # noqa: F401
    except ImportError:
        return "numpy"
    return "torch"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``hetfaas advise``."""
    p.add_argument("function", help="the function, as pkg.module:function (e.g. torch:bmm)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--args-shape",
        dest="args_shape",
        nargs="+",
        metavar="SHAPE",
        help="one random float32 argument per shape, e.g. 1000x1000 1000x1000",
    )
    src.add_argument(
        "--args-from",
        dest="args_from",
        metavar="PKG.MOD:FN",
        help="a function returning the example arguments (a tuple)",
    )
    p.add_argument(
        "--array",
        choices=("torch", "numpy"),
        default=None,
        help="kind of the --args-shape arguments (default torch when installed)",
    )
    sweep = p.add_mutually_exclusive_group()
    sweep.add_argument(
        "--sizes",
        nargs="+",
        metavar="N",
        help="rows along axis 0 of the batched arguments, e.g. 100 200 400",
    )
    sweep.add_argument(
        "--scales",
        nargs="+",
        metavar="F",
        help="factors of the example's axis 0 (default 0.125 0.25 0.5 1)",
    )
    p.add_argument(
        "--batched",
        nargs="+",
        metavar="I",
        help="positions of the arguments scaled and split along axis 0 "
        "(default: every array; for a @ b give 0)",
    )
    p.add_argument("--cpus", type=int, default=None, help="N (default: the pool's cores)")
    p.add_argument("--no-gpu", dest="no_gpu", action="store_true", help="do not measure a GPU")
    p.add_argument(
        "--split",
        default=None,
        metavar="PKG.MOD:FN",
        help="split(args, n) -> list of argument tuples (default: axis-0 parts)",
    )
    p.add_argument(
        "--combine",
        default=None,
        metavar="PKG.MOD:FN",
        help="combine(results) -> result (default: join along axis 0)",
    )
    p.add_argument("--repeats", type=int, default=5, help="timed runs per option and size (5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before them (1)")
    p.add_argument(
        "--price-core-hour",
        dest="price_core_hour",
        type=float,
        default=0.05,
        help="price of a core-hour (0.05, a placeholder)",
    )
    p.add_argument(
        "--price-gpu-hour",
        dest="price_gpu_hour",
        type=float,
        default=2.50,
        help="price of a GPU-hour (2.50, a placeholder)",
    )
    p.add_argument(
        "--timeout-s",
        dest="timeout_s",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"run-time limit of each call ({DEFAULT_TIMEOUT_S:g} s)",
    )
    p.add_argument(
        "--settle-s",
        dest="settle_s",
        type=float,
        default=SETTLE_S,
        help=f"pause before each option's runs, for spinning thread pools ({SETTLE_S:g} s)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random arguments (0)")
    p.add_argument("--json", default=None, metavar="PATH", help="write everything as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def run(args: argparse.Namespace) -> int:
    """Measure, print the table, write ``--json``; 0 on success (errors raise)."""
    fn = resolve(args.function)
    if args.args_shape:
        shapes = [parse_shape(s) for s in args.args_shape]
        example = random_args(shapes, args.array or _default_array(), args.seed)
    else:
        made = resolve(args.args_from)()
        example = tuple(made) if isinstance(made, (tuple, list)) else (made,)
    batched = _numbers(args.batched, int, "--batched")
    split = resolve(args.split) if args.split else None
    combine = resolve(args.combine) if args.combine else None
    try:
        advice = advise(
            fn,
            *example,
            sizes=_numbers(args.sizes, int, "--sizes"),
            scales=_numbers(args.scales, float, "--scales"),
            batched=batched,
            cpus=args.cpus,
            gpu=False if args.no_gpu else None,
            split=split,
            combine=combine,
            repeats=args.repeats,
            warmup=args.warmup,
            price_core_hour=args.price_core_hour,
            price_gpu_hour=args.price_gpu_hour,
            timeout_s=args.timeout_s,
            settle_s=args.settle_s,
            name=args.function,
            log=None if args.quiet else (lambda msg: print(msg, file=sys.stderr)),
        )
    except ValueError as exc:  # a bad price or number: say it as a usage error
        if isinstance(exc, ConfigurationError):
            raise
        raise ConfigurationError(str(exc)) from exc
    print(advice, end="")
    if args.json:
        advice.write_json(args.json)
        print(f"json: {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hetfaas advise", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


__all__ = ["add_arguments", "main", "run"]
