"""The sampler on real processes, and `hetfaas monitor` on a real command."""

import subprocess
import sys
import time

import pytest

import hetfaas
from hetfaas.monitor import Sampler, monitor_command, read_csv

BURN = """
import multiprocessing as mp, time
def burn(s):
    end = time.process_time() + s
    while time.process_time() < end:
        pass
if __name__ == "__main__":
    block = bytearray(200 * 2**20)  # 200 MiB, touched
    for i in range(0, len(block), 4096):
        block[i] = 1
    ps = [mp.Process(target=burn, args=(0.8,)) for _ in range(2)]
    [p.start() for p in ps]
    [p.join() for p in ps]
"""


def test_interval_is_bounded():
    with pytest.raises(hetfaas.ConfigurationError, match=r"at most every 0\.05 s"):
        Sampler(interval_s=0.01)


def test_sampler_sees_a_process_tree_cpu_and_memory(tmp_path):
    script = tmp_path / "burn.py"
    script.write_text(BURN)
    proc = subprocess.Popen([sys.executable, str(script)])
    with Sampler(proc.pid, 0.05, gpus=False) as s:
        proc.wait(60)
        time.sleep(0.1)
    assert proc.returncode == 0
    assert len(s.samples) >= 10
    assert max(x.processes for x in s.samples) == 3  # the script and its two children
    assert max(x.rss_mb for x in s.samples) >= 200
    assert s.samples[-1].cpu_s >= 1.0  # 2 x 0.8 s burned, children included
    assert s.cost_wall_s > 0 and 0 <= s.cost_fraction < 0.5


def test_monitor_command_writes_csv_plot_and_advice(tmp_path):
    script = tmp_path / "burn.py"
    script.write_text(BURN)
    out = tmp_path / "out"
    code, usage, sampler = monitor_command([sys.executable, str(script)], 0.1, out, cpus=2,
                                           memory_mb=4096)  # fmt: skip
    assert code == 0
    assert usage.cpu_s >= 1.6 * 0.95  # exact, from the OS: both children's 0.8 s
    assert usage.peak_rss_mb >= 200 and usage.memory_efficiency < 0.1
    rows = read_csv(out / "samples.csv")
    assert len(rows) == len(sampler.samples) >= 5 and rows[0].gpu_util_percent is None
    assert (out / "usage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / "summary.md").read_text()
    assert "request about" in summary and "monitor cost" in summary


def test_cli_runs_the_command_and_returns_its_status(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "hetfaas", "monitor", "--interval", "0.1", "--out",
         str(tmp_path), "--", sys.executable, "-c", "import sys; sys.exit(3)"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert "exit status: 3" in proc.stderr and (tmp_path / "summary.md").exists()
    none = subprocess.run([sys.executable, "-m", "hetfaas", "monitor"], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert none.returncode == 2 and "after --" in none.stderr
