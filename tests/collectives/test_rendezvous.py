"""``hetfaas rendezvous --port N`` as a process, and a group paired through it."""

from __future__ import annotations

import subprocess
import sys

from hetfaas.cli import build_parser

from .conftest import free_port, run_ranks


def test_cli_rendezvous_pairs_a_group():
    assert build_parser().parse_args(["rendezvous", "--port", "7000"]).port == 7000
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hetfaas.cli", "rendezvous", "--port", str(port),
         "--host", "127.0.0.1"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert f"listening on 127.0.0.1:{port}" in proc.stdout.readline()
        out = run_ranks(f"tcp://127.0.0.1:{port}", 3, lambda c: c.allreduce(c.rank), timeout_s=10)
        assert out == [3, 3, 3]
    finally:
        proc.terminate()
        proc.wait(10)
