"""Every ```python block of README.md and docs/*.md runs, as written, so documented paths
cannot rot.

The blocks of one file run in order in one fresh namespace (a later block may use names an
earlier one defined), in a temporary working directory (nothing is written into the repo).
A block opts out only with an HTML comment on the line right before its fence:

    <!-- not-run: needs an NVIDIA GPU (TensorRT) -->
    ```python

Opt-outs must be few and each must say why; they are listed in the test output.
The blocks run with one torch thread (restored afterwards): CI runs two test workers on two
cores, and oversubscribed OpenMP threads made the small models' training ~60x slower.
docs/examples/ (a separate plugin distribution with its own tests) is not scanned.
"""

from __future__ import annotations

import re
import sys
import textwrap
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: what a page tells its reader to install first, made importable (not installed) for its run:
#: plugin-authors.md tests the example plugin after `pip install docs/examples/...`
EXTRA_SYS_PATH = {"plugin-authors.md": [ROOT / "docs" / "examples" / "modelopt-example-plugin"
                                        / "src"]}

#: the most opt-outs all files together may have: every one is a path CI does not check
MAX_OPT_OUTS = 3

FENCE_OPEN = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")
OPT_OUT = re.compile(r"^\s*<!--\s*not-run\s*:(?P<reason>.*?)-->\s*$")
PYTHON = {"python", "py", "python3"}


@dataclass(frozen=True)
class Block:
    path: Path
    line: int          # 1-based line of the opening fence
    code: str
    skip_reason: str | None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def python_blocks(path: Path) -> list[Block]:
    """The ```python blocks of a Markdown file, in order, with their opt-out if any."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE_OPEN.match(lines[i])
        if not m:
            i += 1
            continue
        fence, start = m["fence"], i
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        if m["lang"].lower() in PYTHON:
            code = textwrap.dedent("\n".join(lines[start + 1:j]))
            prev = lines[start - 1] if start else ""
            opt = OPT_OUT.match(prev)
            blocks.append(Block(path, start + 1, code,
                                opt["reason"].strip() if opt else None))
        i = j + 1
    return blocks


def opt_outs() -> list[Block]:
    return [b for p in DOC_FILES for b in python_blocks(p) if b.skip_reason is not None]


def run_blocks(path: Path) -> None:
    """Run the file's blocks in order in one namespace; fail naming the file and line."""
    import torch

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _run_in_order(path)
    finally:
        torch.set_num_threads(threads)


def _run_in_order(path: Path) -> None:
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for block in python_blocks(path):
        if block.skip_reason is not None:
            continue
        # pad with newlines so tracebacks point at the Markdown file's own line numbers
        source = "\n" * block.line + block.code
        failure = None
        try:
            exec(compile(source, str(block.path), "exec"), namespace)  # noqa: S102 - our own docs
        except Exception as e:  # noqa: BLE001 - report every failure with its place
            # drop this function's own frame: the traceback starts in the Markdown file
            tb = "".join(traceback.format_exception(type(e), e, e.__traceback__.tb_next))
            failure = (f"{block.where}: the ```python block starting on line {block.line} "
                       f"failed: {type(e).__name__}: {e}\n\n{tb}")
        if failure:
            pytest.fail(failure, pytrace=False)


#: the pages that hold python blocks (pages of prose only have nothing to run)
RUN_FILES = [p for p in DOC_FILES if python_blocks(p)]


@pytest.mark.parametrize("path", RUN_FILES, ids=[p.name for p in RUN_FILES])
def test_doc_python_blocks_run(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    extra = EXTRA_SYS_PATH.get(path.name, [])
    for folder in extra:
        monkeypatch.syspath_prepend(str(folder))
    before = set(sys.modules)
    try:
        run_blocks(path)
    finally:
        if extra:  # forget modules imported from there: other tests install them properly
            for name in set(sys.modules) - before:
                if getattr(sys.modules[name], "__file__", None) and any(
                        str(f) in sys.modules[name].__file__ for f in extra):
                    del sys.modules[name]


def test_opt_outs_are_few_and_explained(capsys: pytest.CaptureFixture[str]):
    skipped = opt_outs()
    with capsys.disabled():
        print(f"\ndocs snippets not run ({len(skipped)}):")
        for b in skipped:
            print(f"  {b.where}: {b.skip_reason}")
    bad = [b.where for b in skipped if len(b.skip_reason.split()) < 3]
    assert not bad, f"opt-outs must say why, in a few words: {bad}"
    assert len(skipped) <= MAX_OPT_OUTS, (
        f"{len(skipped)} docs blocks opt out of running (at most {MAX_OPT_OUTS}): "
        f"{[b.where for b in skipped]}; make them runnable instead")


def test_opt_out_comments_sit_right_before_a_python_fence():
    """A `not-run` comment anywhere else would silently opt out nothing (or the wrong block)."""
    misplaced = []
    for path in DOC_FILES:
        lines = path.read_text(encoding="utf-8").splitlines()
        for k, line in enumerate(lines):
            if "not-run" in line and "<!--" in line:
                nxt = FENCE_OPEN.match(lines[k + 1]) if k + 1 < len(lines) else None
                if not (OPT_OUT.match(line) and nxt and nxt["lang"].lower() in PYTHON):
                    misplaced.append(f"{path.relative_to(ROOT)}:{k + 1}")
    assert not misplaced, f"`<!-- not-run: REASON -->` must be right before a ```python fence: " \
                          f"{misplaced}"


def test_scanner_finds_blocks_and_opt_outs(tmp_path: Path):
    """The extractor itself: fences, languages, indentation, opt-outs, line numbers."""
    md = tmp_path / "x.md"
    md.write_text("# t\n\n```python\na = 1\n```\n\n```bash\nls\n```\n\n"
                  "<!-- not-run: needs an NVIDIA GPU -->\n```python\nb = 2\n```\n"
                  "- item\n\n  ```py\n  c = a + 1\n  ```\n", encoding="utf-8")
    got = [(b.line, b.code.strip(), b.skip_reason) for b in python_blocks(md)]
    assert got == [(3, "a = 1", None), (12, "b = 2", "needs an NVIDIA GPU"),
                   (17, "c = a + 1", None)]
