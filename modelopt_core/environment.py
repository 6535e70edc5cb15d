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

__all__ = ["cpu_flags", "cpu_line", "describe_environment", "isa_line"]

#: distributions whose versions every report records besides the registered components' own
#: (absent ones are left out): the core, the model's libraries
LIBRARIES = ("modelopt-core", "torch", "numpy", "transformers")


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def _cpu_model() -> str:
    for line in _cpuinfo():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()  # (not platform.processor(): it forks `uname -p`)


def _cpu_topology() -> dict[str, Any]:
    """``physical_cores`` (distinct (package, core) pairs) and ``cpu_id`` (vendor, family,
    model: what a virtual machine's generic model name such as "AMD EPYC" leaves out), as far
    as /proc/cpuinfo tells them."""
    cores: set[tuple[str, str]] = set()
    fields: dict[str, str] = {}
    package = ""
    for line in _cpuinfo():
        key, _, value = (x.strip() for x in line.partition(":"))
        if key == "physical id":
            package = value
        elif key == "core id":
            cores.add((package, value))
        elif key in ("vendor_id", "cpu family", "model") and key not in fields:
            fields[key] = value
    out: dict[str, Any] = {}
    if cores:
        out["physical_cores"] = len(cores)
    if "cpu family" in fields:
        out["cpu_id"] = (f"{fields.get('vendor_id', '?')} family {fields['cpu family']} "
                         f"model {fields.get('model', '?')}")
    return out


def _platform() -> str:
    """Like ``platform.platform()`` ("Linux-6.1.0-x86_64-with-glibc2.36"), without the
    ``uname -p`` child process it forks: a fork inside a process whose runtime threads are
    busy loading libraries has crashed that child here (ld.so assertion)."""
    if not hasattr(os, "uname"):
        return platform.platform()
    u = os.uname()
    lib, version = platform.libc_ver()
    return f"{u.sysname}-{u.release}-{u.machine}" + (f"-with-{lib}{version}" if lib else "")


#: the CPU features that decide which INT8/BF16 kernels run, as /proc/cpuinfo names them
ISA_FLAGS = ("avx2", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile",
             "amx_int8", "amx_bf16")


def cpu_flags() -> list[str]:
    """The CPU features that decide which INT8/BF16 kernels run (x86 Linux only)."""
    for line in _cpuinfo():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return sorted(f for f in ISA_FLAGS if f in flags)
    return []


def isa_line(flags: list[str] | None) -> str:
    """The ISA features that matter for INT8/BF16 speed, in words: ``"AVX2, AVX-VNNI,
    AVX-512 (VNNI, BF16), no AMX"``; ``"ISA not recorded"`` for None (an older record),
    ``""`` for an empty list (not x86 Linux: nothing read)."""
    if flags is None:
        return "ISA not recorded"
    if not flags:
        return ""
    f = set(flags)
    parts = [name for flag, name in (("avx2", "AVX2"), ("avx_vnni", "AVX-VNNI")) if flag in f]
    if "avx512f" in f:
        sub = [n for flag, n in (("avx512_vnni", "VNNI"), ("avx512_bf16", "BF16")) if flag in f]
        parts.append("AVX-512" + (f" ({', '.join(sub)})" if sub else ""))
    amx = [n for flag, n in (("amx_int8", "INT8"), ("amx_bf16", "BF16")) if flag in f]
    parts.append(f"AMX ({', '.join(amx)})" if amx or "amx_tile" in f else "no AMX")
    return ", ".join(parts)


_ARCHES = ("x86_64", "AMD64", "i386", "i686", "aarch64", "arm64", "?")


def cpu_line(env: dict[str, Any]) -> str:
    """The machine class a figure belongs to, in one line: CPU model (family/model), cores
    and hardware threads (and how many are usable here), ISA features. E.g. ``"AMD EPYC
    (AuthenticAMD family 26 model 2), 2 cores / 2 threads, AVX2, AVX-VNNI, AVX-512 (VNNI,
    BF16), no AMX"``."""
    cpu = str(env.get("cpu", "?"))
    if cpu in _ARCHES:  # an older record: the architecture, no model name
        cpu = f"CPU model not recorded ({cpu})"
    parts = [cpu + (f" ({env['cpu_id']})" if env.get("cpu_id") else "")]
    threads, cores = env.get("cores"), env.get("physical_cores")
    if threads:
        usable = env.get("cores_usable", threads)
        text = f"{cores} cores / {threads} threads" if cores else f"{threads} cores"
        parts.append(text if usable == threads else f"{text} ({usable} usable)")
    isa = isa_line(env.get("cpu_flags"))
    if isa:
        parts.append(isa)
    return ", ".join(parts)


def component_libraries(plugins: Any = None) -> list[str]:
    """The distributions the registered components run on, read from the registry (``plugins``,
    default: the process-wide manager): each component's ``libraries`` and the distributions
    that provide the modules in its ``requires`` (a plugin's runtime is recorded with no
    table of names here); installed ones only, sorted."""
    from . import _registry

    pm = plugins if plugins is not None else _registry.default_plugins()
    by_module = _module_distributions()
    names: set[str] = set()
    for info in pm.components():
        names.update(getattr(info.cls, "libraries", ()))
        for mod in getattr(info.cls, "requires", ()):
            names.update(by_module.get(str(mod).split(".")[0], ()))
    return sorted(names)


_MODULE_DISTS: dict[str, list[str]] | None = None


def _module_distributions() -> dict[str, list[str]]:
    """importlib.metadata's top-level module -> distributions map, read once."""
    global _MODULE_DISTS
    if _MODULE_DISTS is None:
        _MODULE_DISTS = dict(md.packages_distributions())
    return _MODULE_DISTS


def describe_environment(plugins: Any = None) -> dict[str, Any]:
    """Plain data: platform, CPU model, family/model and ISA flags, hardware threads
    (``cores``), physical and usable cores, torch threads
    (when torch is loaded), 1-minute load average, library versions (:data:`LIBRARIES` and
    :func:`component_libraries` of ``plugins``)."""
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": _platform(),
        "cpu": _cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),  # logical CPUs (hardware threads)
        **_cpu_topology(),
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
    for name in dict.fromkeys(LIBRARIES + tuple(component_libraries(plugins))):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    env["versions"] = versions
    return env
