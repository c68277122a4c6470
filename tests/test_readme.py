"""The README's promises: its two commands, and its Python examples run as written."""

import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang):
    # dedented: a block inside a list item is indented with it
    return [textwrap.dedent(b) for b in re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)]


def test_readme_opens_with_two_commands_and_ci_runs_the_second():
    head = README.split("## ")[0]
    commands = re.findall(r"```bash\n(.*?)\n```", head, flags=re.S)
    assert len(commands) == 2
    run_job, run_tests = commands
    assert "hetfaas bench bmm" in run_job and "torch==2.13.0" in run_job
    assert "pytest" in run_tests
    assert run_tests in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("code", _blocks("python"), ids=lambda c: c.splitlines()[0][:40])
def test_readme_python_block_runs(code, tmp_path):
    if 'Executor("slurm"' in code:  # the README tells users to start Slurm first; so do we
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip("starting Slurm daemons here needs root and apt-get")
        up = subprocess.run(
            [str(ROOT / "scripts" / "slurm-up")], capture_output=True, text=True, timeout=600
        )
        assert up.returncode == 0, up.stdout + up.stderr
    if 'Executor("ray"' in code:
        pytest.importorskip("ray")
    script = tmp_path / "block.py"
    script.write_text(code)
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
