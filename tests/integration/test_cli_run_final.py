"""Issue 26 item 2 (recipes), read as a user reads ``modelopt run``'s output: the final
artifact is the best measured one within the accuracy budget, not the last step; the run says
which and why, report.md/json keep it as a note, and a bad ``[output] final`` is refused
before anything runs."""

from __future__ import annotations

import json

import pytest

import modelopt_core as mo
from modelopt_core.cli import main
from modelopt_demo.models import SmallCNN

RECIPE = {"model": "modelopt_demo.models:SmallCNN", "example_inputs": [[1, 1, 8, 8]],
          "data": "modelopt_demo.recipes:digits_data", "train": {"epochs": 4, "lr": 0.003},
          # the last step prunes 90% of the channels with no recovery: far over the budget
          "steps": [{"apply": "prune.structured", "ratio": 0.9}],
          "compare": {"backends": ["torch"], "profilers": ["accuracy", "latency"],
                      "profiler_options": {"latency": {"min_time_s": 0.05}}}}


def test_the_final_artifact_is_the_best_within_the_budget_not_the_last_step(tmp_path,
                                                                              capsys):
    out = tmp_path / "out"
    (tmp_path / "r.json").write_text(json.dumps(
        {**RECIPE, "output": {"dir": str(out), "max_accuracy_drop": 1.0}}))
    assert main(["run", str(tmp_path / "r.json"), "--no-progress"]) == 0
    said = capsys.readouterr().out
    line = next(x for x in said.splitlines() if x.startswith("final artifact: "))
    assert line.startswith("final artifact: original on torch: the fastest measured row "
                           "within the accuracy budget"), line
    assert "over the budget: 1:prune.structured on torch" in line
    report = json.loads((out / "report.json").read_text())
    assert report["notes"]["final"] == [line]
    assert "final artifact: original on torch" in (out / "report.md").read_text()
    art = mo.load_artifact(out / "final-artifact", model=SmallCNN())
    # the original (its lineage: the source, and the load), not the pruned model
    assert [st.component for st in art.lineage if st.kind != "load"] == ["original"], \
        art.lineage
    assert art.props.runtime == "torch"
    assert "final" in (out / "report.html").read_text()

    # final = "last": the last step, as before
    (tmp_path / "last.json").write_text(json.dumps(
        {**RECIPE, "train": {"epochs": 1}, "output": {"dir": str(out), "final": "last"}}))
    assert main(["run", str(tmp_path / "last.json"), "--no-progress"]) == 0
    assert "final artifact: the last step, 1:prune.structured (final = 'last')" in \
        capsys.readouterr().out


@pytest.mark.parametrize("output, match", [
    ({"final": "fastest"}, "final must be one of"),
    ({"max_accuracy_drop": -1}, "max_accuracy_drop must be a number >= 0"),
])
def test_a_bad_final_choice_is_refused_before_anything_runs(tmp_path, capsys, output, match):
    (tmp_path / "r.json").write_text(json.dumps({**RECIPE, "output": output}))
    assert main(["run", str(tmp_path / "r.json"), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "ConfigError: recipe [output]: " in err and match in err, err
    assert main(["run", str(tmp_path / "r.json")]) == 1
    captured = capsys.readouterr()
    assert match in captured.err and "train epoch" not in captured.err
