"""The energy profiler: RAPL counter math on a fake powercap sysfs tree (the files the kernel
exposes, advanced by the test), counter wraparound, and the honest "unavailable" path."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import torch

import modelopt_core as mo
from modelopt_profilers.energy import EnergyProfiler, EnergyUnavailable, RaplCounter

MAX_UJ = 262_143_328_850


def _zone(root: Path, name: str, label: str, start: int = 0, max_uj: int = MAX_UJ) -> Path:
    z = root / name
    z.mkdir(parents=True)
    (z / "name").write_text(label + "\n")
    (z / "energy_uj").write_text(f"{start}\n")
    (z / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return z


@pytest.fixture
def sysfs(tmp_path):
    root = tmp_path / "powercap"
    _zone(root, "intel-rapl:0", "package-0", start=1_000)
    _zone(root, "intel-rapl:0:0", "core", start=5)  # a part of package 0: not summed again
    _zone(root, "intel-rapl:1", "package-1", start=7_000)
    _zone(root, "intel-rapl-mmio:0", "package-0", start=3)  # the same package via MMIO
    return root


def _bump(zone: Path, uj: int, max_uj: int = MAX_UJ) -> None:
    v = int((zone / "energy_uj").read_text())
    (zone / "energy_uj").write_text(f"{(v + uj) % max_uj}\n")


class CostlyRunner:
    """A real torch runner that, like hardware, adds a fixed energy per call to the counter."""

    def __init__(self, runner, zone: Path, uj: int, max_uj: int = MAX_UJ) -> None:
        self.runner, self.zone, self.uj, self.max_uj = runner, zone, uj, max_uj
        self.device = runner.device

    def __call__(self, *xs):
        out = self.runner(*xs)
        _bump(self.zone, self.uj, self.max_uj)
        return out

    def synchronize(self):
        self.runner.synchronize()


@pytest.fixture
def session():
    model = torch.nn.Sequential(torch.nn.Linear(8, 4)).eval()
    return mo.Session(model, (torch.randn(2, 8),), progress=False)


def test_rapl_finds_package_domains(sysfs):
    c = RaplCounter(sysfs)
    assert c.domains == ["package-0", "package-1"]
    assert c.read() == [1_000, 7_000]


def test_joules_per_inference_and_watts(sysfs, session):
    prof = EnergyProfiler(sysfs_root=str(sysfs), min_time_s=0.05, min_calls=20, warmup=2)
    with session.runner("torch") as r:
        runner = CostlyRunner(r, sysfs / "intel-rapl:1", uj=2_500)
        m = prof.profile(runner, session.current, session.context())
    assert m["energy_source"] == "rapl" and m["energy_domains"] == ["package-0", "package-1"]
    assert m["energy_calls"] >= 20 and m["energy_duration_s"] >= 0.05
    assert m["joules_per_inference"] == pytest.approx(0.0025)
    assert m["avg_watts"] == pytest.approx(0.0025 * m["energy_calls"] / m["energy_duration_s"])


def test_counter_wraparound(tmp_path, session):
    root = tmp_path / "powercap"
    max_uj = 1_000_000
    zone = _zone(root, "intel-rapl:0", "package-0", start=max_uj - 10_000, max_uj=max_uj)
    c = RaplCounter(root)
    assert c.joules([max_uj - 100], [50]) == pytest.approx(150e-6)
    prof = EnergyProfiler(sysfs_root=str(root), min_time_s=0.0, min_calls=30, warmup=0)
    with session.runner("torch") as r:  # 30 calls x 1 mJ: wraps past max_energy_range_uj
        m = prof.profile(CostlyRunner(r, zone, 1_000, max_uj), session.current,
                         session.context())
    assert int((zone / "energy_uj").read_text()) < max_uj - 10_000
    assert m["joules_per_inference"] == pytest.approx(0.001)
    assert m["energy_calls"] == 30


def test_idle_power_is_subtracted(sysfs, session):
    zone = sysfs / "intel-rapl:0"
    stop = threading.Event()

    def idle_power():  # 20 W of background load, written every 2 ms like a live counter
        t0 = time.perf_counter()
        base = int((zone / "energy_uj").read_text())
        while not stop.is_set():
            tmp = zone / "energy_uj.tmp"  # atomic, so a read never sees a half-written file
            tmp.write_text(f"{base + int(20e6 * (time.perf_counter() - t0))}\n")
            os.replace(tmp, zone / "energy_uj")
            time.sleep(0.002)

    # the per-call energy goes to the other package: the two must not disturb each other
    t = threading.Thread(target=idle_power, daemon=True)
    t.start()
    try:
        prof = EnergyProfiler(sysfs_root=str(sysfs), min_time_s=0.3, min_calls=10,
                              warmup=0, subtract_idle=True, idle_s=0.3)
        with session.runner("torch") as r:
            m = prof.profile(CostlyRunner(r, sysfs / "intel-rapl:1", 50_000),
                             session.current, session.context())
    finally:
        stop.set()
        t.join()
    assert m["idle_watts"] == pytest.approx(20, rel=0.3)
    assert m["avg_watts"] > m["idle_watts"]
    assert m["joules_per_inference"] == pytest.approx(0.05, rel=0.3)


def test_frozen_counter_is_unavailable_not_zero(sysfs, session):
    prof = EnergyProfiler(sysfs_root=str(sysfs), min_time_s=0.0, min_calls=3, warmup=0)
    ctx = session.context()
    with session.runner("torch") as r:
        m = prof.profile(r, session.current, ctx)
    assert m["joules_per_inference"] is None and "did not advance" in m["energy_unavailable"]
    assert any("did not advance" in n for n in ctx.notes)


def test_tree_without_rapl_domains(tmp_path):
    (tmp_path / "dtpm").mkdir()
    with pytest.raises(EnergyUnavailable, match="no intel-rapl package domains"):
        RaplCounter(tmp_path)
    with pytest.raises(EnergyUnavailable, match="does not exist"):
        RaplCounter(tmp_path / "absent")


def test_unavailable_here_gives_none_and_a_note(session):
    """On this machine (a VM: no readable RAPL, no NVML) compare() still succeeds: the energy
    cells are empty and a note says why."""
    ok, why = EnergyProfiler.availability()
    if ok:
        pytest.skip("this machine has a readable energy counter")
    assert "RAPL not readable" in why and "NVML not readable" in why
    report = session.compare(profilers=["size", "energy"])
    row = report.rows[0]
    assert "error" not in row and row["size_mb"] > 0
    assert row["joules_per_inference"] is None and row["energy_source"] is None
    assert "RAPL not readable" in row["energy_unavailable"]
    notes = [n for ns in report.notes.values() for n in ns]
    assert any("energy" in n and "RAPL not readable" in n for n in notes)
    assert "mJ/inference" in report.to_markdown()


def test_nvml_index_follows_cuda_visible_devices(monkeypatch):
    from modelopt_profilers.energy import _visible_device

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert _visible_device(0) == 3 and _visible_device(1) == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8a1b")
    assert _visible_device(0) == "GPU-8a1b"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert _visible_device(2) == 2


def test_forced_nvml_without_pynvml_says_why(session):
    try:
        import pynvml  # noqa: F401
        pytest.skip("pynvml is installed here")
    except ImportError:
        pass
    ctx = session.context()
    with session.runner("torch") as r:
        m = EnergyProfiler(source="nvml").profile(r, session.current, ctx)
    assert m["joules_per_inference"] is None
    assert "pip install nvidia-ml-py" in m["energy_unavailable"]
