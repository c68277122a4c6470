"""hetfaas.machine: facts about the machine a benchmark ran on."""

from __future__ import annotations

import json
import os
import sys

import pytest

from hetfaas import machine

CPUINFO = """\
processor\t: 0
model name\t: Example CPU 9000
cpu MHz\t\t: 2400.500
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse4_2 avx avx2 fma avx512f amx_tile hypervisor
processor\t: 1
model name\t: Example CPU 9000
cpu MHz\t\t: 2400.500
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse4_2 avx avx2 fma avx512f amx_tile hypervisor
processor\t: 2
physical id\t: 0
core id\t\t: 1
"""


def test_parse_cpuinfo_reads_model_flags_and_cores() -> None:
    info = machine.parse_cpuinfo(CPUINFO)
    assert info["model"] == "Example CPU 9000"
    assert info["mhz"] == pytest.approx(2400.5)
    assert {"avx2", "fma", "avx512f", "amx_tile"} <= info["flags"]
    assert "avx512_bf16" not in info["flags"]
    assert info["processors"] == 3
    assert info["physical_cores"] == 2  # two distinct (physical id, core id) pairs


def test_parse_cpuinfo_empty_text() -> None:
    info = machine.parse_cpuinfo("")
    assert info["model"] == ""
    assert info["flags"] == set()
    assert info["physical_cores"] is None


def test_describe_matches_this_process() -> None:
    d = machine.describe()
    assert d["logical_cores"] == os.cpu_count()
    if hasattr(os, "sched_getaffinity"):
        assert d["affinity_cores"] == len(os.sched_getaffinity(0))
        assert d["affinity"] == sorted(os.sched_getaffinity(0))
    assert set(d["cpu_flags"]) <= set(machine.INTERESTING_FLAGS)
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as fh:
            real = machine.parse_cpuinfo(fh.read())
        assert set(d["cpu_flags"]) == set(machine.INTERESTING_FLAGS) & real["flags"]
        if real["model"]:
            assert d["cpu_model"] == real["model"]
    assert d["memory_gib"] is not None and d["memory_gib"] > 0
    assert d["python"].endswith(".".join(str(v) for v in sys.version_info[:3]))
    assert len(d["host_sha256"]) == 12
    json.dumps(d)  # JSON-ready


def test_describe_torch_facts() -> None:
    torch = pytest.importorskip("torch")
    d = machine.describe()
    assert d["torch"] == str(torch.__version__)
    assert d["torch_threads"] == torch.get_num_threads()
    if torch.cuda.is_available():
        assert len(d["gpus"]) == torch.cuda.device_count()
        assert all(g["memory_gib"] > 0 for g in d["gpus"])
    else:
        assert d["gpus"] == []
        assert d["cuda_version"] is None


def test_describe_without_gpu_queries_lists_none() -> None:
    assert machine.describe(with_gpus=False)["gpus"] == []


def test_describe_tolerates_missing_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    d = machine.describe()
    assert d["torch"] is None
    assert "torch_error" in d
    assert d["gpus"] == [] and d["cuda_version"] is None
    text = machine.format_markdown(d)
    assert "not available" in text


def test_format_markdown_lists_facts() -> None:
    d = machine.describe()
    text = machine.format_markdown(d)
    lines = text.strip().splitlines()
    assert lines[0].startswith("| Item | Value |")
    assert all(line.startswith("|") and line.endswith("|") for line in lines)
    assert str(d["cpu_model"]).replace("|", "\\|") in text
    assert f"| Logical cores | {d['logical_cores']} |" in text
    if not d["gpus"]:
        assert "none visible" in text


def test_format_markdown_gpu_rows() -> None:
    d = machine.describe(with_gpus=False)
    d["gpus"] = [
        {"index": 0, "name": "Fake GPU A", "memory_gib": 80.0, "capability": "9.0"},
        {"index": 1, "name": "Fake GPU B", "memory_gib": 40.0, "capability": "8.0"},
    ]
    d["cuda_version"] = "12.4"
    d["affinity"] = [0, 1, 2, 5, 7, 8]
    text = machine.format_markdown(d)
    assert "| GPU count | 2 |" in text
    assert "Fake GPU A, 80.0 GiB" in text and "Fake GPU B, 40.0 GiB" in text
    assert "| CUDA version | 12.4 |" in text
    assert "(0-2,5,7-8)" in text
    assert "none visible" not in text
