"""The device advisor: where should this function run? Answered with measurements (seed 000:
"when is serverless beneficial?").

``hetfaas.advise(fn, *example_args)`` and ``hetfaas advise pkg.mod:fn --args-shape ...`` time
the function on 1 core, on N cores (N parallel calls on axis-0 parts of the input, and one
call with N threads) and on a GPU when there is one, each as serverless calls through a real
Executor (overhead included) with bare metal in this process beside them, over a sweep of
input sizes. The answer (:class:`Advice`) holds every trial, the time, overhead and cost of
each option per size, the fastest and the cheapest choice per size and the break-even sizes,
bracketed between measured sizes.

- :mod:`.decide`: the pure part, measurements in, choices and break-even sizes out;
- :mod:`.inputs`: scaling, splitting and joining arguments along axis 0;
- :mod:`.measure`: the I/O edge, timing each option;
- :mod:`.report`: :class:`Advice`, its table and JSON;
- :mod:`.command`: the command line.
"""

from __future__ import annotations

from .api import NO_GPU, advise, plan
from .command import add_arguments, run
from .decide import (
    BreakEven,
    Cell,
    Crossing,
    Decision,
    Option,
    Prices,
    SizeChoice,
    Spread,
    Trial,
    decide,
)
from .measure import OnDevice
from .report import Advice, SizeInfo

__all__ = [
    "NO_GPU",
    "Advice",
    "BreakEven",
    "Cell",
    "Crossing",
    "Decision",
    "OnDevice",
    "Option",
    "Prices",
    "SizeChoice",
    "SizeInfo",
    "Spread",
    "Trial",
    "add_arguments",
    "advise",
    "decide",
    "plan",
    "run",
]
