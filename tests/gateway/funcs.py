"""Functions the gateway tests deploy by import path (``tests.gateway.funcs:NAME``)."""

from __future__ import annotations

import os
import sys
import time

import hetfaas


def add(a, b=0):
    return a + b


def noop(x=None):
    return x


def echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


def shout(text):
    print(f"out: {text}")
    print(f"err: {text}", file=sys.stderr)
    return text.upper()


def fail(message):
    raise ValueError(message)


def sleep(seconds):
    time.sleep(seconds)
    return seconds


def big(n):
    return "x" * n


def not_json():
    return object()


def _log_run(path, i, seconds):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"start {i} {os.getpid()}\n".encode())
        time.sleep(seconds)
        os.write(fd, f"end {i}\n".encode())
    finally:
        os.close(fd)
    return i


def logged(path, i, seconds):
    """Appends ``start i`` then ``end i`` to ``path`` (O_APPEND: one line per write)."""
    return _log_run(path, i, seconds)


@hetfaas.idempotent
def logged_idempotent(path, i, seconds):
    return _log_run(path, i, seconds)
