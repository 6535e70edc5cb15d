"""The search's reports mark the best trial (issue 26 item 3): a ``best`` column in report.md
(and so the terminal table) and report.html, the trials tied with it within noise of the end's
side-by-side re-timing said so ("tie within noise (p50 ratio r, 95% CI lo-hi)") on their rows
and in the summary line under the table, and the Pareto column consistent with the best (on the
front, or its cell says why not). Read as a user reads them: report.md's rows, the page's text.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from modelopt_search.report import write_report

import modelopt_core as mo

pytest.importorskip("plotly")

BASE = {"step": "original (torch fp32)", "backend": "torch", "accuracy": 95.0,
        "latency_p50_ms": 0.11, "size_mb": 0.041}


def _row(trial, ms, acc=95.0, size=0.03, backend="onnxruntime", **kw):
    return {"trial": trial, "step": f"trial {trial}", "state": "complete", "backend": backend,
            "accuracy": acc, "accuracy_drop": round(95.0 - acc, 6), "latency_p50_ms": ms,
            "objective": ms, "size_mb": size, "feasible": 95.0 - acc <= 1.0,
            "recipe": f"recipe {trial}", **kw}


def _search(tmp_path, confirmed=None, ties=None, objective="latency"):
    return SimpleNamespace(
        out=tmp_path, confirmed=confirmed or {}, ties=ties or {}, objective=objective,
        target=["onnxruntime"], max_drop=1.0, baseline=dict(BASE), environment={},
        html_at=float("-inf"),
        s=SimpleNamespace(pm=mo.get_plugin_manager()))


def _rows():
    return [_row(0, 0.016, size=0.039), _row(1, 0.020, acc=94.8, size=0.023),
            _row(2, 0.017, size=0.028, latency_noisy=True, latency_iqr_ms=0.008),
            _row(3, 0.09, backend="openvino", size=0.05), _row(4, 0.012, acc=80.0)]


def _md_rows(md):
    """report.md's table as dicts by step (header -> cell)."""
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return {cells[0]: dict(zip(head, cells)) for cells in
            ([c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:])}


def _study():
    return SimpleNamespace(study_name="s")


def test_the_confirmed_best_and_its_tie_are_marked_in_report_md_and_the_page(tmp_path):
    # the end re-timed trials 0, 2 and 3 side by side: 2 was fastest, 0 within noise of it
    s = _search(tmp_path, confirmed={0: (0.0290, 1), 2: (0.0284, 1), 3: (0.141, 1)},
                ties={0: (1.021, 0.992, 1.071)})
    write_report(s, _study(), _rows(), notes=["the end"])
    md = (tmp_path / "report.md").read_text()
    rows = _md_rows(md)
    assert rows["trial 2"]["best"] == "best"  # the confirmed fastest, not trial 0's own 0.016
    assert rows["trial 0"]["best"] == "tie within noise (p50 ratio 1.021, 95% CI 0.992-1.071)"
    assert rows["trial 3"]["best"] == "" and rows["trial 4"]["best"] == ""
    assert rows["trial 2"]["pareto"] == "True"  # the best is on the front it is reported with
    assert rows["trial 2"]["noisy"] == "True"  # the noisy timing is marked in the table
    # the end's re-timing under its own headers, not raw key names
    assert rows["trial 2"]["side-by-side p50 ms"] == "0.0284"
    assert rows["trial 2"]["threads"] == "1" and "confirmed_p50_ms" not in md
    # the summary line, right under the table
    summary = md.split("| trial 4 |")[1].split("\n")[2]
    assert summary.startswith("**Best: trial 2 on onnxruntime, p50 0.0284 ms re-timed side by "
                              "side at the end; final-artifact/ holds it")
    assert summary.endswith("; tie within noise with trial 0 (p50 ratio 1.021, 95% CI "
                            "0.992-1.071): as fast as it here.**")
    page = (tmp_path / "report.html").read_text()
    best_tr = re.search(r'<tr class="[^"]*\bbest\b[^"]*">(.*?)</tr>', page).group(1)
    assert "★" in best_tr and ">best<" in best_tr and "trial 2" in best_tr
    assert page.count('class="star"') == 1
    assert 'id="summary">Best: trial 2' in page and "tie within noise (p50 ratio 1.021" in page
    assert '"name":"\\u2605 best"' in page or '"name":"★ best"' in page  # the plots' star
    assert 'id="trial-history"' in page and "best so far" in page
    assert 'class="noisy"' in page
    assert "accuracy budget (≥ 94" in page or "accuracy budget (\\u2265 94" in page


def test_during_the_search_the_best_is_best_so_far_and_no_tie_is_claimed(tmp_path):
    s = _search(tmp_path)
    write_report(s, _study(), _rows())  # after a trial: no notes, not final
    rows = _md_rows((tmp_path / "report.md").read_text())
    assert rows["trial 0"]["best"] == "best so far"  # the lowest feasible objective
    assert rows["trial 4"]["best"] == ""  # faster, but misses the accuracy budget
    assert "**Best so far: trial 0 on onnxruntime, 0.016 ms (its own trial's timing).**" in \
        (tmp_path / "report.md").read_text()


def test_a_best_dominated_by_an_unconfirmed_trial_says_why_in_its_pareto_cell(tmp_path):
    # trial 1 was not re-timed; by its own 0.02 ms it beats trial 3's re-timed 0.05 ms
    rows = [_row(1, 0.020, size=0.02), _row(3, 0.03, size=0.05)]
    s = _search(tmp_path, confirmed={3: (0.05, 1), 5: (0.06, 1)})
    write_report(s, _study(), rows, notes=[])
    got = _md_rows((tmp_path / "report.md").read_text())["trial 3"]
    assert got["best"] == "best"
    assert got["pareto"].startswith("no: trial(s) 1 dominate it by their own trial's timing")
    assert "re-timed side by side at the end, it was the fastest" in got["pareto"]
    page = (tmp_path / "report.html").read_text()
    assert 'id="pareto-latency-best-note"' in page
    assert "chosen by the side-by-side re-timing at the end" in page


def test_no_feasible_trial_no_best(tmp_path):
    write_report(_search(tmp_path), _study(), [_row(4, 0.012, acc=80.0)], notes=[])
    md = (tmp_path / "report.md").read_text()
    assert "**No trial met the accuracy budget yet.**" in md
    assert "★" not in (tmp_path / "report.html").read_text().split("<h2>Pareto")[0]


def test_the_search_page_is_small_and_shares_plotly_beside_it(tmp_path):
    write_report(_search(tmp_path), _study(), _rows(), notes=[])
    page = tmp_path / "report.html"
    scripts = list(tmp_path.glob("plotly-*.min.js"))
    assert len(scripts) == 1 and scripts[0].stat().st_size > 3_000_000
    assert page.stat().st_size < 200_000  # was 4.8 MB with plotly.js inside
    assert f'<script type="text/javascript" src="{scripts[0].name}"></script>' in \
        page.read_text()
