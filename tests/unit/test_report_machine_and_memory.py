"""Figures that travel (issue 26, item 11): every report and every benchmark results table
starts with the machine class it was measured on (CPU model, cores/threads, the ISA features
that decide INT8/BF16 speed: AVX-512 VNNI/BF16, AMX). And CPU memory (item 4): the memory
profiler's peak RSS and its growth are columns of the Markdown and terminal tables of a real
``Session.compare``, and survive a narrow terminal."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from helpers import terminal_text

import modelopt_core as mo
from modelopt_core.environment import cpu_flags, cpu_line, describe_environment

ROOT = Path(__file__).resolve().parents[2]
NAMES = {"avx2": "AVX2", "avx_vnni": "AVX-VNNI", "avx512_vnni": "VNNI", "avx512_bf16": "BF16"}


def _report() -> mo.Report:
    s = mo.Session(torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU()),
                   (torch.randn(1, 64),), progress=False)
    s.export("onnx")
    return s.compare(backends=["torch", "onnxruntime"], profilers=["latency", "size", "memory"],
                     profiler_options={"latency": {"min_time_s": 0.05, "iterations": 10}})


def _model_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return ""


def test_the_report_header_names_the_machine_class():
    rep = _report()
    md = rep.to_markdown().splitlines()
    assert md[0].startswith("### ") and md[2].startswith("Measured on: ")
    head = md[2]
    if Path("/proc/cpuinfo").is_file():
        assert head.startswith(f"Measured on: {_model_name()}")
        env = rep.environment
        assert f"{env['physical_cores']} cores / {env['cores']} threads" in head
        for flag in cpu_flags():
            if flag in NAMES:
                assert NAMES[flag] in head, flag
        assert ("AMX (" in head) == any(f.startswith("amx") for f in cpu_flags())
        assert ("no AMX" in head) != ("AMX (" in head)
    text = terminal_text(rep)
    assert text.startswith("measured on: ")  # before the table


def test_machine_classes_read_from_recorded_results():
    """The line from the machine records the committed results hold: an Intel Xeon with AMX
    and an AMD EPYC without; an older record says what it lacks."""
    xeon = json.loads((ROOT / "benchmarks/results/runtimes.json").read_text())["machine"]
    epyc = json.loads((ROOT / "benchmarks/results/detect.json").read_text())["machine"]
    assert cpu_line(xeon) == ("Intel(R) Xeon(R) Processor, 2 cores, AVX2, AVX-512 (VNNI, "
                              "BF16), AMX (INT8, BF16)")
    assert cpu_line(epyc).endswith("AVX-512 (VNNI, BF16), no AMX")
    assert cpu_line({"cpu": "x86_64", "cores": 2}) == \
        "CPU model not recorded (x86_64), 2 cores, ISA not recorded"
    assert cpu_line({"cpu": "Some CPU", "cores": 16, "physical_cores": 8, "cores_usable": 4,
                     "cpu_flags": ["avx2"]}) == "Some CPU, 8 cores / 16 threads (4 usable), " \
                                                "AVX2, no AMX"
    assert describe_environment()["cores"] >= 1


def test_every_results_table_starts_with_its_machine(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import common
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    common.write_results("x", {}, [{"a": 1.5}], ["a"], "A title", notes=["n"])
    lines = (tmp_path / "x.md").read_text().splitlines()
    assert lines[0] == "# A title" and lines[2] == common.machine_line(common.machine())
    assert lines[2].startswith("Measured on: " + cpu_line(common.machine()))
    for md in sorted((ROOT / "benchmarks/results").glob("*.md")):  # the committed ones too
        text = md.read_text()
        tables = text.count("\n|---")
        assert text.count("Measured on: ") >= (1 if md.stem != "zoo" else tables), md.name


def test_cpu_memory_is_in_the_markdown_and_terminal_tables():
    rep = _report()
    assert all(isinstance(r.get("peak_rss_mb"), float) for r in rep.rows)
    assert {"peak_rss_mb", "rss_growth_mb"} <= set(rep.columns)
    md = rep.to_markdown()
    header = next(line for line in md.splitlines() if line.startswith("| step"))
    assert "| RSS MB | RSS +MB |" in header
    cells = next(line for line in md.splitlines() if line.startswith("| original"))
    assert f"| {rep.rows[0]['peak_rss_mb']:.0f} |" in cells
    text = terminal_text(rep)  # 80 columns: details go first, peak RSS stays
    table = text[text.index("┏"):text.index("┘")]
    assert "RSS MB" in table and f"{rep.rows[0]['peak_rss_mb']:.0f}" in table
