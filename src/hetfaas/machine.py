"""What machine a measurement ran on: CPU, memory, OS, library versions and GPUs.

``describe()`` gathers the facts a benchmark report needs to be read by someone else (the
processor, the cores this process may use, the SIMD/matrix instruction sets that decide how
fast a matrix product can go, memory, versions, GPUs). torch is imported lazily and may be
absent; GPU facts come from ``torch.cuda`` only when a device is visible.
``format_markdown()`` renders the dict as a Markdown table.
"""

from __future__ import annotations

import hashlib
import os
import platform
import socket
import sys
from typing import Any

INTERESTING_FLAGS = (
    "sse4_2",
    "fma",
    "avx",
    "avx2",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "amx_fp16",
    "hypervisor",
)
"""CPU flags that matter for dense linear algebra (and ``hypervisor``: running in a VM)."""


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """Model name, MHz, flags and socket/core counts from the text of ``/proc/cpuinfo``."""
    model = ""
    mhz: float | None = None
    flags: set[str] = set()
    physical: set[tuple[str, str]] = set()
    physical_id = ""
    processors = 0
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip()
        value = value.strip()
        if key == "processor":
            processors += 1
        elif key in ("model name", "Model Name") and not model:
            model = value
        elif key == "cpu MHz" and mhz is None:
            try:
                mhz = float(value)
            except ValueError:
                mhz = None
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
        elif key == "physical id":
            physical_id = value
        elif key == "core id":
            physical.add((physical_id, value))
    return {
        "model": model,
        "mhz": mhz,
        "flags": flags,
        "processors": processors,
        "physical_cores": len(physical) or None,
    }


def _memory_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:  # psutil missing or failing: fall back to /proc/meminfo
        for line in _read_text("/proc/meminfo").splitlines():
            if line.startswith("MemTotal:"):
                parts = line.split()
                if len(parts) >= 2 and parts[1].isdigit():
                    return int(parts[1]) * 1024
        return None


def _affinity() -> list[int]:
    getter = getattr(os, "sched_getaffinity", None)
    if getter is None:
        return list(range(os.cpu_count() or 1))
    try:
        return sorted(getter(0))
    except OSError:
        return list(range(os.cpu_count() or 1))


def _torch_facts(with_gpus: bool) -> dict[str, Any]:
    try:
        import torch
    except Exception as exc:  # absent or broken install
        return {
            "torch": None,
            "torch_error": f"{type(exc).__name__}: {exc}",
            "gpus": [],
            "cuda_version": None,
        }
    facts: dict[str, Any] = {
        "torch": str(torch.__version__),
        "torch_threads": int(torch.get_num_threads()),
        "torch_interop_threads": int(torch.get_num_interop_threads()),
        "torch_cuda_build": getattr(torch.version, "cuda", None),
        "mkldnn": bool(
            getattr(torch.backends, "mkldnn", None) and torch.backends.mkldnn.is_available()
        ),
        "gpus": [],
        "cuda_version": None,
    }
    if not with_gpus:
        return facts
    try:
        if torch.cuda.is_available():
            facts["cuda_version"] = torch.version.cuda
            for index in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(index)
                facts["gpus"].append(
                    {
                        "index": index,
                        "name": str(props.name),
                        "memory_gib": round(props.total_memory / 2**30, 1),
                        "capability": f"{props.major}.{props.minor}",
                        "multiprocessors": int(props.multi_processor_count),
                    }
                )
    except Exception as exc:  # a driver problem must not break a report
        facts["gpu_error"] = f"{type(exc).__name__}: {exc}"
    return facts


def describe(with_gpus: bool = True) -> dict[str, Any]:
    """Facts about this machine and Python environment, as a JSON-ready dict.

    ``with_gpus=False`` skips the CUDA queries (which create a CUDA context in this process).
    """
    info = parse_cpuinfo(_read_text("/proc/cpuinfo"))
    affinity = _affinity()
    try:
        import numpy

        numpy_version: str | None = numpy.__version__
    except Exception:
        numpy_version = None
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        load = None
    host = socket.gethostname()
    d: dict[str, Any] = {
        "host_sha256": hashlib.sha256(host.encode()).hexdigest()[:12],
        "cpu_model": info["model"] or platform.processor() or platform.machine(),
        "cpu_mhz": info["mhz"],
        "arch": platform.machine(),
        "logical_cores": os.cpu_count(),
        "physical_cores": info["physical_cores"],
        "affinity_cores": len(affinity),
        "affinity": affinity,
        "cpu_flags": [f for f in INTERESTING_FLAGS if f in info["flags"]],
        "memory_gib": None,
        "load_avg": load,
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "python_executable": sys.executable,
        "numpy": numpy_version,
    }
    mem = _memory_bytes()
    if mem is not None:
        d["memory_gib"] = round(mem / 2**30, 1)
    d.update(_torch_facts(with_gpus))
    return d


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) if value else "none"
    return str(value).replace("|", "\\|")


def _affinity_text(cores: list[int]) -> str:
    if not cores:
        return "none"
    runs: list[str] = []
    start = prev = cores[0]
    for c in [*cores[1:], None]:
        if c is not None and c == prev + 1:
            prev = c
            continue
        runs.append(str(start) if start == prev else f"{start}-{prev}")
        if c is not None:
            start = prev = c
    return ",".join(runs)


def format_markdown(d: dict[str, Any]) -> str:
    """A two-column Markdown table of :func:`describe`'s dict (GPUs listed one per row)."""
    rows: list[tuple[str, str]] = [
        ("CPU", _cell(d.get("cpu_model"))),
        ("Clock (MHz, as reported)", _cell(d.get("cpu_mhz"))),
        ("Architecture", _cell(d.get("arch"))),
        ("Logical cores", _cell(d.get("logical_cores"))),
        ("Physical cores", _cell(d.get("physical_cores"))),
        (
            "Cores in this process's affinity",
            f"{_cell(d.get('affinity_cores'))} ({_affinity_text(list(d.get('affinity') or []))})",
        ),
        ("SIMD / matrix flags", _cell(d.get("cpu_flags"))),
        ("Memory (GiB)", _cell(d.get("memory_gib"))),
        ("Load average (1, 5, 15 min)", _cell(d.get("load_avg"))),
        ("OS", _cell(d.get("os"))),
        ("Python", _cell(d.get("python"))),
        ("NumPy", _cell(d.get("numpy"))),
    ]
    if d.get("torch"):
        rows.append(("PyTorch", _cell(d.get("torch"))))
        rows.append(("PyTorch intra-op threads (caller)", _cell(d.get("torch_threads"))))
        rows.append(("PyTorch CUDA build", _cell(d.get("torch_cuda_build") or "CPU only")))
    else:
        rows.append(("PyTorch", f"not available ({_cell(d.get('torch_error'))})"))
    gpus = d.get("gpus") or []
    if gpus:
        rows.append(("CUDA version", _cell(d.get("cuda_version"))))
        rows.append(("GPU count", str(len(gpus))))
        for g in gpus:
            rows.append(
                (
                    f"GPU {g.get('index')}",
                    f"{_cell(g.get('name'))}, {_cell(g.get('memory_gib'))} GiB, "
                    f"compute capability {_cell(g.get('capability'))}",
                )
            )
    else:
        rows.append(("GPUs", "none visible"))
    if d.get("gpu_error"):
        rows.append(("GPU query error", _cell(d.get("gpu_error"))))
    rows.append(("Host (sha256 prefix)", _cell(d.get("host_sha256"))))
    lines = ["| Item | Value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines) + "\n"


__all__ = ["INTERESTING_FLAGS", "describe", "format_markdown", "parse_cpuinfo"]
