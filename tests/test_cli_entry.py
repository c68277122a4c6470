"""``python -m hetfaas`` is the ``hetfaas`` command: same parser, same output, same exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import hetfaas

SRC = Path(hetfaas.__file__).resolve().parent.parent


def run_module(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m hetfaas ARGS`` in a fresh interpreter; this tree's package comes first."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "hetfaas", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def test_python_m_hetfaas_info_describes_this_machine():
    proc = run_module("info")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:2] == ["| Item | Value |", "|---|---|"]
    rows = dict(
        (cells[1].strip(), cells[2].strip())
        for cells in (line.split("|") for line in lines[2:])
        if len(cells) >= 4
    )
    assert rows["Architecture"] == os.uname().machine
    assert rows["Python"].endswith(".".join(str(v) for v in sys.version_info[:3]))
    assert rows["Cores in this process's affinity"].startswith(str(len(os.sched_getaffinity(0))))
    assert "GPUs" in rows


def test_python_m_hetfaas_is_the_cli():
    proc = run_module("--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: hetfaas ")
    for command in ("bench", "rendezvous", "info"):
        assert command in proc.stdout
    bad = run_module("bench", "no-such-bench")
    assert bad.returncode == 2
    assert "invalid choice: 'no-such-bench'" in bad.stderr
