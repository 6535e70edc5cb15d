"""The ``energy`` profiler: joules per inference and average watts from hardware counters.

CPU runners read Linux RAPL package counters (``/sys/class/powercap/intel-rapl:N/energy_uj``,
cumulative microjoules that wrap at ``max_energy_range_uj``); CUDA runners read NVML's total
energy counter (``nvmlDeviceGetTotalEnergyConsumption``, millijoules, Volta and newer). The
figure is the whole package's (or GPU's) energy while the model runs, so other load on the
machine counts too: measure on a quiet machine, and optionally subtract the idle power
measured just before. Where no counter is readable (most VMs and containers; RAPL is
root-only since Linux 5.10) the result says so with the reason: never an estimate.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Literal

import modelopt_core as mo

from .profilers import _inputs

RAPL_ROOT = "/sys/class/powercap"
_TOP_ZONE = re.compile(r"^(intel|amd)-rapl:\d+$")  # package zones; "intel-rapl:0:0" are parts


class EnergyUnavailable(mo.ModeloptError):
    """No energy counter is readable here; the message says why."""


class RaplCounter:
    """The summed package-domain RAPL counters under ``root`` (a powercap sysfs tree)."""

    source = "rapl"

    def __init__(self, root: str | Path = RAPL_ROOT) -> None:
        root = Path(root)
        if not root.is_dir():
            raise EnergyUnavailable(f"RAPL not readable: {root} does not exist (no powercap "
                                    "driver: a VM or a container?)")
        zones = sorted(p for p in root.iterdir() if _TOP_ZONE.match(p.name))
        named = [z for z in zones if _read_text(z / "name").startswith("package")]
        self.zones = named or zones
        if not self.zones:
            raise EnergyUnavailable(f"RAPL not readable: {root} has no intel-rapl package "
                                    "domains (a VM?)")
        self.max_uj = []
        for z in self.zones:
            self._read_uj(z / "energy_uj")
            try:
                self.max_uj.append(int(_read_text(z / "max_energy_range_uj") or 0))
            except ValueError:
                self.max_uj.append(0)
        self.domains = [_read_text(z / "name") or z.name for z in self.zones]

    @staticmethod
    def _read_uj(path: Path) -> int:
        try:
            return int(path.read_text().strip())
        except PermissionError:
            raise EnergyUnavailable(
                f"RAPL not readable: {path}: permission denied (energy_uj is root-only since "
                f"Linux 5.10; run as root or `sudo chmod o+r {path.parent}/*/energy_uj "
                f"{path}`)") from None
        except (OSError, ValueError) as e:
            raise EnergyUnavailable(f"RAPL not readable: {path}: {e}") from None

    def read(self) -> list[int]:
        """The current counter of each domain, microjoules."""
        return [self._read_uj(z / "energy_uj") for z in self.zones]

    def joules(self, before: list[int], after: list[int]) -> float:
        """Energy between two reads, summed over domains; a counter that wrapped past
        ``max_energy_range_uj`` once is unwrapped (runs shorter than one wrap period, which
        is tens of minutes at full load)."""
        total = 0
        for b, a, m in zip(before, after, self.max_uj):
            d = a - b
            if d < 0:
                d += m
            total += max(d, 0)
        return total / 1e6


class NvmlCounter:
    """NVML's total-energy counter of one GPU (millijoules since the driver loaded)."""

    source = "nvml"

    def __init__(self, index: int = 0) -> None:
        try:
            import pynvml
        except ImportError:
            raise EnergyUnavailable("NVML not readable: pynvml is not installed (pip install "
                                    "nvidia-ml-py)") from None
        try:
            pynvml.nvmlInit()
            physical = _visible_device(index)  # NVML counts every GPU; CUDA only visible ones
            self.handle = (pynvml.nvmlDeviceGetHandleByIndex(physical)
                           if isinstance(physical, int)
                           else pynvml.nvmlDeviceGetHandleByUUID(physical))
            self._get = pynvml.nvmlDeviceGetTotalEnergyConsumption
            self._get(self.handle)
            name = pynvml.nvmlDeviceGetName(self.handle)
        except Exception as e:  # noqa: BLE001  pynvml.NVMLError and friends: no driver, old GPU
            raise EnergyUnavailable(f"NVML not readable on GPU {index}: {e} (the total-energy "
                                    "counter needs an NVIDIA driver and a Volta or newer "
                                    "GPU)") from None
        self.domains = [name.decode() if isinstance(name, bytes) else str(name)]

    def read(self) -> list[int]:
        """The counter, millijoules."""
        return [int(self._get(self.handle))]

    def joules(self, before: list[int], after: list[int]) -> float:
        """Energy between two reads."""
        return max(after[0] - before[0], 0) / 1e3


def _visible_device(index: int) -> int | str:
    """The NVML index (or UUID) of CUDA device ``index`` under ``CUDA_VISIBLE_DEVICES``."""
    import os

    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
               if v.strip()]
    if index >= len(visible):
        return index
    v = visible[index]
    return int(v) if v.isdigit() else v


def _read_text(p: Path) -> str:
    try:
        return p.read_text().strip()
    except OSError:
        return ""


def open_counter(source: str, device: str = "cpu", root: str | Path = RAPL_ROOT) -> Any:
    """The energy counter for ``source`` ("auto": NVML for a CUDA device, RAPL otherwise);
    raises :class:`EnergyUnavailable` with the reason."""
    if source == "auto":
        source = "nvml" if device.startswith("cuda") else "rapl"
    if source == "nvml":
        index = int(device.split(":")[1]) if device.startswith("cuda:") else 0
        return NvmlCounter(index)
    return RaplCounter(root)


@mo.config
class EnergyConfig:
    warmup: int = mo.field(5, validator=mo.in_range(0, 10_000), help="unmeasured calls first")
    min_time_s: float = mo.field(1.0, validator=mo.in_range(0, 3600),
                                 help="run for at least this long (RAPL updates every ~1 ms)")
    min_calls: int = mo.field(10, validator=mo.positive, help="measured calls (at least)")
    source: Literal["auto", "rapl", "nvml"] = mo.field(
        "auto", help="counter: NVML on a CUDA runner, RAPL otherwise (auto), or forced")
    subtract_idle: bool = mo.field(False, help="subtract the idle power measured just before "
                                               "(the model's own energy, not the machine's)")
    idle_s: float = mo.field(0.5, validator=mo.in_range(0.01, 600),
                             help="idle measurement length when subtract_idle")
    sysfs_root: str = mo.field(RAPL_ROOT, help="the powercap sysfs tree RAPL is read from")
    batch_size: int | None = mo.field(None, validator=mo.positive,
                                      help="tile the inputs to this batch size")
    inputs: Literal["example", "calibration"] = mo.field(
        "example", help="the example inputs, or the session's calibration batches")


class EnergyProfiler(mo.Profiler):
    """Joules per inference and average watts from RAPL (CPU) or NVML (CUDA) counters;
    unavailable, with the reason, where neither is readable (VMs)."""

    name = "energy"
    Config = EnergyConfig
    columns = (
        mo.Column("joules_per_inference", "mJ/inference", "J", lambda v: f"{1e3 * v:.3f}",
                  "lower", order=70),
        mo.Column("avg_watts", "avg W", "W", "{:.1f}", "lower", order=71),
        mo.Column("idle_watts", "idle W", "W", "{:.1f}", table=False),
        mo.Column("energy_source", "energy counter", table=False),
        mo.Column("energy_domains", "energy domains", table=False),
        mo.Column("energy_duration_s", "energy s", "s", "{:.2f}", table=False),
        mo.Column("energy_calls", "energy calls", "calls", table=False),
        mo.Column("energy_unavailable", "energy unavailable", table=False),
    )

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        """Available when RAPL (default sysfs root) or NVML is readable here."""
        reasons = []
        for source in ("rapl", "nvml"):
            try:
                open_counter(source, "cuda:0" if source == "nvml" else "cpu")
                return True, ""
            except EnergyUnavailable as e:
                reasons.append(str(e))
        return False, "; ".join(reasons) + "."

    def profile(self, runner: mo.Runner, artifact: mo.ModelArtifact,
                ctx: mo.Context) -> dict[str, Any]:
        c = self.config
        try:
            counter = open_counter(c.source, getattr(runner, "device", "cpu"), c.sysfs_root)
            return self.measure(runner, counter, _inputs(ctx, c.batch_size, c.inputs))
        except EnergyUnavailable as e:
            ctx.warn(f"energy of {artifact.name!r}: unavailable: {e}")
            return {"joules_per_inference": None, "avg_watts": None, "energy_source": None,
                    "energy_unavailable": str(e)}

    def measure(self, runner: Any, counter: Any, sets: list[tuple[Any, ...]]) -> dict[str, Any]:
        """Run ``runner`` over ``sets`` for at least ``min_time_s`` and ``min_calls`` between
        two reads of ``counter``; the metrics dict."""
        c = self.config
        for i in range(c.warmup):
            runner(*sets[i % len(sets)])
        runner.synchronize()
        idle_w = None
        if c.subtract_idle:
            e0, t0 = counter.read(), time.perf_counter()
            time.sleep(c.idle_s)
            idle_w = counter.joules(e0, counter.read()) / (time.perf_counter() - t0)
        calls = 0
        e0, t0 = counter.read(), time.perf_counter()
        while calls < c.min_calls or time.perf_counter() - t0 < c.min_time_s:
            runner(*sets[calls % len(sets)])
            calls += 1
        runner.synchronize()
        e1, t1 = counter.read(), time.perf_counter()
        joules, seconds = counter.joules(e0, e1), t1 - t0
        if joules <= 0:
            raise EnergyUnavailable(f"{counter.source} counter did not advance in {seconds:.2f} "
                                    "s (a frozen or virtualised counter)")
        out: dict[str, Any] = {"energy_source": counter.source, "energy_domains": counter.domains,
                               "energy_duration_s": seconds, "energy_calls": calls,
                               "avg_watts": joules / seconds}
        if idle_w is not None:
            out["idle_watts"] = idle_w
            joules = max(joules - idle_w * seconds, 0.0)
        out["joules_per_inference"] = joules / calls
        return out
