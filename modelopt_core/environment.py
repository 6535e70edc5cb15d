"""What a measurement ran on: CPU model, cores, threads, load, library versions.

Every :class:`~modelopt_core.report.Report` from ``Session.compare`` carries this, so a figure
is never read without the machine it came from. Reading it imports nothing heavy: library
versions come from installed-package metadata.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import sys
from pathlib import Path
from typing import Any

__all__ = ["cpu_flags", "describe_environment"]

#: distributions whose versions every report records (absent ones are left out)
LIBRARIES = ("modelopt-core", "torch", "onnx", "onnxruntime", "onnxscript", "openvino",
             "tensorrt", "numpy", "transformers")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()  # (not platform.processor(): it forks `uname -p`)


def _platform() -> str:
    """Like ``platform.platform()`` ("Linux-6.1.0-x86_64-with-glibc2.36"), without the
    ``uname -p`` child process it forks: a fork inside a process whose runtime threads are
    busy loading libraries has crashed that child here (ld.so assertion)."""
    if not hasattr(os, "uname"):
        return platform.platform()
    u = os.uname()
    lib, version = platform.libc_ver()
    return f"{u.sysname}-{u.release}-{u.machine}" + (f"-with-{lib}{version}" if lib else "")


def cpu_flags() -> list[str]:
    """The CPU features that decide which INT8/BF16 kernels run (x86 Linux only)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(f for f in ("avx2", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16",
                                          "amx_tile", "amx_int8", "amx_bf16") if f in flags)
    except OSError:
        pass
    return []


def describe_environment() -> dict[str, Any]:
    """Plain data: platform, CPU model and flags, logical and usable cores, torch threads
    (when torch is loaded), 1-minute load average, library versions."""
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": _platform(),
        "cpu": _cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
    }
    if hasattr(os, "sched_getaffinity"):
        env["cores_usable"] = len(os.sched_getaffinity(0))
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        env["torch_threads"] = torch.get_num_threads()
        env["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    if hasattr(os, "getloadavg"):
        env["load_1min"] = round(os.getloadavg()[0], 2)
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    env["versions"] = versions
    return env
