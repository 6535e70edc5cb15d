"""The model zoo's results recorder (hooks called from ``tests/conftest.py``).

Every zoo test carries ``@pytest.mark.zoo(model=..., cell=...)``: which row (model) and
column (cell) of ``docs/model-zoo.md`` it is evidence for. Several ``zoo`` marks on one test
merge, so a parametrized fixture can name the model (``pytest.param("vit",
marks=pytest.mark.zoo(model="hf-vit"))``) and the test's own parameters the cell (merged marks
that lack the model or the cell make no cell). A test gives
short figures for the table with ``record_property("zoo", "cosine min 0.991")`` (any number
of them), and a refusal that is the expected answer of the cell (the test passes because the
refusal is typed and says why) with ``record_property("zoo_refusal", "<why>")``.

With ``MODELOPT_ZOO_RESULTS=<path.json>`` set, the run writes there, per marked test: model,
cell, outcome (passed / failed / skipped), the skip reason or the failure's first line, the
details, and the duration (setup + call + teardown), with the machine and library versions
and the zoo modules skipped at collection. ``tools/zoo_doc.py`` renders it.

Under pytest-xdist the workers tag each marked item's ``user_properties`` with its model and
cell at collection; the reports (``user_properties`` included) travel to the controller,
which alone records and writes the file. Without xdist the one process does all of it.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ENV = "MODELOPT_ZOO_RESULTS"
MARKER = ("zoo(model, cell): a model-zoo cell of docs/model-zoo.md (tools/zoo_doc.py); "
          "several zoo marks on one test merge (model from a fixture param, cell from the test)")
#: distributions whose versions the results (and the doc's header) record
VERSIONS = ("torch", "transformers", "openvino", "nncf", "onnxruntime", "onnx", "ultralytics",
            "coremltools", "litert-torch", "ai-edge-quantizer", "numpy")
#: the recorder of the running session (the controller's, under xdist); None when not recording
_RECORDER: list[ZooRecorder] = []
_KEY = pytest.StashKey[bool]()


def zoo_mark(item: pytest.Item) -> tuple[str, str] | None:
    """(model, cell) of a test from its merged ``zoo`` marks; None when it has none, or when
    they name no model or no cell once merged (a test that only uses a fixture whose param
    names the model is not a cell by that alone)."""
    marks = list(item.iter_markers("zoo"))
    if not marks:
        return None
    found: dict[str, str] = {}
    for mark in reversed(marks):  # the closest mark (the test's own) wins
        for key in ("model", "cell"):
            if key in mark.kwargs:
                found[key] = str(mark.kwargs[key])
        if mark.args:
            raise pytest.UsageError(f"{item.nodeid}: zoo marks take keywords only "
                                    f"(model=..., cell=...), got {mark.args!r}")
    if "model" not in found or "cell" not in found:
        return None
    return found["model"], found["cell"]


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _properties(report: pytest.TestReport) -> list[tuple[str, Any]]:
    return [(p[0], p[1]) for p in report.user_properties]  # (lists after xdist's transport)


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    lr = report.longrepr
    reason = lr[2] if isinstance(lr, (tuple, list)) and len(lr) == 3 else str(lr)
    return reason.removeprefix("Skipped: ")


def _failure(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    head = lines[0] if lines else "failed"
    return (f"{report.when}: " if report.when != "call" else "") + head[:300]


def environment() -> dict[str, Any]:
    """The machine (``modelopt_core.environment``) and the zoo's library versions."""
    import importlib.metadata as md

    from modelopt_core.environment import describe_environment

    env = describe_environment()
    versions = dict(env.get("versions", {}))
    for name in VERSIONS:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    env["versions"] = versions
    return env


class ZooRecorder:
    """Collects the marked tests' reports and writes the results file at the session's end."""

    def __init__(self, path: Path, config: pytest.Config) -> None:
        self.path = path
        self.start = time.time()
        self.args = list(config.invocation_params.args)
        self.workers = getattr(config.option, "numprocesses", None)
        self.results: dict[str, dict[str, Any]] = {}
        self.collected: list[dict[str, str]] = []
        self.collect_skipped: list[dict[str, str]] = []

    def logreport(self, report: pytest.TestReport) -> None:
        props = _properties(report)
        tags = dict(p for p in props if p[0] in ("zoo_model", "zoo_cell"))
        if "zoo_model" not in tags:
            return
        rec = self.results.setdefault(report.nodeid, {
            "nodeid": report.nodeid, "model": tags["zoo_model"], "cell": tags["zoo_cell"],
            "outcome": "passed", "details": [], "refusals": [], "duration": 0.0})
        rec["duration"] = round(rec["duration"] + report.duration, 3)
        rec["details"] = [str(v) for k, v in props if k == "zoo"]
        rec["refusals"] = [str(v) for k, v in props if k == "zoo_refusal"]
        if report.failed and rec["outcome"] != "failed":
            rec["outcome"], rec["message"] = "failed", _failure(report)
        elif report.skipped and rec["outcome"] == "passed":
            rec["outcome"], rec["reason"] = "skipped", _skip_reason(report)

    def collectreport(self, report: pytest.CollectReport) -> None:
        if any(c["nodeid"] == report.nodeid for c in self.collect_skipped):
            return  # (each xdist worker collects every module)
        if report.skipped and report.nodeid.endswith(".py"):
            self.collect_skipped.append({"nodeid": report.nodeid,
                                         "reason": _skip_reason(report)})
        elif report.failed and report.nodeid.endswith(".py"):
            self.collect_skipped.append({"nodeid": report.nodeid,
                                         "reason": "collection error: " + str(
                                             report.longrepr).strip().splitlines()[-1][:300]})

    def write(self, exitstatus: int) -> None:
        end = time.time()
        data = {
            "generated": _dt.datetime.fromtimestamp(end, _dt.timezone.utc)
            .isoformat(timespec="seconds"),
            "command": "pytest " + " ".join(self.args),
            "wall_s": round(end - self.start, 1),
            "exitstatus": int(exitstatus),
            "xdist_workers": self.workers,
            "environment": environment(),
            "collect_skipped": self.collect_skipped,
            "collected": self.collected,
            "results": sorted(self.results.values(), key=lambda r: r["nodeid"]),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        tmp.replace(self.path)


# -- the hooks tests/conftest.py forwards ---------------------------------------------------

def _recorder() -> ZooRecorder | None:
    return _RECORDER[-1] if _RECORDER else None


def configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER)
    path = os.environ.get(ENV)
    if path and not _is_worker(config):
        _RECORDER.append(ZooRecorder(Path(path).resolve(), config))
        config.stash[_KEY] = True


def unconfigure(config: pytest.Config) -> None:
    if config.stash.get(_KEY, False) and _RECORDER:
        _RECORDER.pop()


def collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tag every marked item (on the process that collects: a worker under xdist)."""
    rec = _recorder() if config.stash.get(_KEY, False) else None
    for item in items:
        found = zoo_mark(item)
        if found is None:
            continue
        item.user_properties += [("zoo_model", found[0]), ("zoo_cell", found[1])]
        if rec is not None:
            rec.collected.append({"nodeid": item.nodeid, "model": found[0], "cell": found[1]})


def runtest_logreport(report: pytest.TestReport) -> None:
    rec = _recorder()
    if rec is not None:
        rec.logreport(report)


def collectreport(report: pytest.CollectReport) -> None:
    rec = _recorder()
    if rec is not None:
        rec.collectreport(report)


def sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    rec = _recorder() if session.config.stash.get(_KEY, False) else None
    if rec is not None:
        rec.write(exitstatus)
        print(f"\nmodel zoo results: {rec.path}", file=sys.stderr)
