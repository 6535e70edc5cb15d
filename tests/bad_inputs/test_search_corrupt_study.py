"""A damaged ``study.db`` (issue 23, item 10): an intact SQLite header over zeroed pages. Resuming
the search from it is a SearchError that names the file, says it is corrupt and how to start
over (a new --out), never a raw storage error ("unexpected StorageInternalError")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from helpers import digits_recipe_module
from modelopt_search.errors import SearchError
from modelopt_search.study import open_study

DIRECTIONS = ["maximize", "minimize"]

HELPER = digits_recipe_module(one_thread=False, from_path=False)


def _study_db(folder: Path) -> tuple[Path, bytes, int]:
    """A study file as a search leaves it (a few trials); (path, its bytes, page size)."""
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "study.db"
    study = optuna.create_study(storage=f"sqlite:///{db}", study_name="s",
                                directions=DIRECTIONS)
    study.set_user_attr("baseline", {"accuracy": 90.0})
    for i in range(3):
        t = study.ask()
        t.suggest_categorical("precision", ["none", "quantize.bf16"])
        t.set_user_attr("row", {"step": f"trial {i}"})
        study.tell(t, [90.0, 1.0 + i])
    study.enqueue_trial({"precision": "none"})
    del study
    data = db.read_bytes()
    assert data[:16] == b"SQLite format 3\x00"
    assert int.from_bytes(data[36:40], "big") == 0  # no free pages: every page is in use
    page = int.from_bytes(data[16:18], "big")
    return db, data, page


def _zero_page(db: Path, data: bytes, page: int, k: int) -> None:
    buf = bytearray(data)
    buf[k * page:(k + 1) * page] = bytes(page)
    db.write_bytes(bytes(buf))


def test_every_zeroed_page_is_a_corrupt_study_error(tmp_path):
    """Whichever page after the header page is zeroed, opening the study says the file is
    corrupt (a quick_check of the file before Optuna reads it), names it and says what to do."""
    db, data, page = _study_db(tmp_path / "out")
    url = f"sqlite:///{db}"
    pages = len(data) // page
    assert pages > 3
    for k in range(1, pages):
        _zero_page(db, data, page, k)
        with pytest.raises(SearchError) as e:
            open_study(url, "s", 0, DIRECTIONS)
        msg = str(e.value)
        assert str(db) in msg and "corrupt" in msg and "--out" in msg, (k, msg)
    db.write_bytes(data)  # the intact file still opens
    assert len(open_study(url, "s", 0, DIRECTIONS).trials) == 4


def test_cli_names_the_corrupt_study_file(tmp_path):
    """``modelopt optimize`` resuming over the damaged file: exit 1, SearchError, the file."""
    out = tmp_path / "out"
    db, data, page = _study_db(out)
    _zero_page(db, data, page, 1)
    (tmp_path / "corrupt_helper.py").write_text(HELPER)
    recipe = tmp_path / "r.toml"
    recipe.write_text('''
model = "corrupt_helper:model"
example_inputs = [[1, 1, 8, 8]]
data = "corrupt_helper:data"
[search]
target = "torch"
study_name = "s"
trials = 1
''')
    r = subprocess.run([sys.executable, "-m", "modelopt_core", "-q", "optimize", str(recipe),
                        "--out", str(out)], cwd=tmp_path, capture_output=True, text=True,
                       check=False, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode == 1, r.stderr
    assert "unexpected" not in r.stderr and "SearchError" in r.stderr, r.stderr
    assert f"the study file {db} is corrupt" in r.stderr and "--out" in r.stderr, r.stderr
    assert db.read_bytes()[page:2 * page] == bytes(page)  # left as it was, for inspection
