"""``modelopt optimize recipe.toml``: a recipe's [model]/[data] (as ``modelopt run`` reads
them) plus a ``[search]`` table.

```toml
model = "modelopt_demo.models:SmallCNN"
example_inputs = [[1, 1, 8, 8]]
data = "modelopt_demo.recipes:digits_data"
[train]
epochs = 8
[search]
target = "openvino"            # openvino | onnxruntime | torch
objective = "latency"          # latency | size | energy
max_accuracy_drop = 1.0
trials = 20
time_budget_s = 900            # optional
threads = 2                    # optional: the runtime's thread count
[search.space]                 # optional: overrides of the default recipe space
precision = ["none", "openvino.quantize"]
params = {"prune.structured" = {ratio = {floats = [0.1, 0.5], step = 0.1}}}
[output]
dir = "out/digits-search"
```
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["EXAMPLES", "load_search_recipe", "run", "setup"]

EXAMPLES = """examples:
  modelopt optimize --model model.onnx --calibration calib.npz
                                   no recipe: every runtime here that takes the model,
                                   accuracy = agreement with the original on held-out
                                   calibration samples (add --eval eval.npz for top-1)
  modelopt optimize --model model.pt2 --calibration calib/ --eval eval.npz --trials 40
  modelopt optimize --model mypkg.models:build --model-kwargs '{"width": 16}' \\
                    --calibration calib.npz --target openvino
  modelopt optimize docs/recipes/digits-search.toml
  modelopt optimize recipe.toml --trials 40 --time-budget-s 1800 --out out/search
  modelopt optimize recipe.toml --storage postgresql://user:pw@db/modelopt  (one study,
                                   several machines: run the same command on each)
  modelopt optimize recipe.toml --ray 10.0.0.5:6379 --storage postgresql://user:pw@db/mo
                                   trials on every node of a Ray cluster, one study in
                                   PostgreSQL; best/ confirmed on this machine
  modelopt optimize recipe.toml --ray   a Ray cluster started here (`ray start --head`), else
                                   a new local one; the study stays OUT/study.db"""

_SEARCH_KEYS = {"target", "objective", "max_accuracy_drop", "trials", "time_budget_s",
                "storage", "study_name", "seed", "space", "runtime_options",
                "profiler_options", "threads", "profilers", "step_cache"}


def setup(p: argparse.ArgumentParser) -> None:
    """Arguments of ``modelopt optimize``."""
    from modelopt_core.cli import add_model_options

    p.add_argument("recipe", nargs="?",
                   help="TOML/JSON recipe: model, data (as for `modelopt run`) and a [search] "
                        "table; or, instead, --model and --calibration")
    add_model_options(p, original=True)
    p.add_argument("--calibration-from", metavar="DIR",
                   help="calibrate on traffic a server captured (`modelopt serve --capture "
                        "DIR`) instead of the recipe's or --calibration data")
    p.add_argument("--eval-from", metavar="DIR",
                   help="accuracy = agreement with the production model (the recipe's or "
                        "--model) on captured traffic, no labels; the same DIR as "
                        "--calibration-from is split, never calibrated and measured on the "
                        "same samples")
    p.add_argument("--target", help="runtime(s) to search, comma-separated, or 'all': every "
                                    "runtime available here that takes the model (default: "
                                    "the recipe's [search] target; with --model: all)")
    p.add_argument("--objective", choices=["latency", "size", "energy"],
                   help="what to minimize (default: [search] objective, else latency)")
    p.add_argument("--max-accuracy-drop", type=float, metavar="POINTS",
                   help="accuracy points (%%) the result may lose (default: [search] "
                        "max_accuracy_drop, else 1.0)")
    p.add_argument("--threads", type=int, help="the runtime's thread count (default: "
                                               "[search] threads, else the runtime's own)")
    p.add_argument("--trials", type=int, help="trials this run adds to the study "
                                              "(default: [search] trials, else 20)")
    p.add_argument("--time-budget-s", type=float, help="stop starting trials after this long")
    p.add_argument("--out", help="output folder: study.db, trials.json, report.*, best/ "
                                 "(final-artifact/ links to it) (default: [output] dir, else "
                                 "modelopt-search-out)")
    p.add_argument("--storage", help="Optuna RDB URL shared by workers (default: "
                                     "sqlite:///OUT/study.db)")
    p.add_argument("--study-name", help="study name in the storage")
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="run the trials on a Ray cluster: ADDRESS of its head node (HOST:PORT "
                        "or ray://HOST:PORT); no ADDRESS: RAY_ADDRESS, a cluster started on "
                        "this machine, else a new local one. Several machines need --storage "
                        "postgresql://...")
    p.add_argument("--ray-workers", type=int, metavar="N",
                   help="worker slots on the Ray cluster (default: its CPUs / threads)")
    p.add_argument("--seed", type=int, help="sampler seed")
    p.add_argument("--step-cache", metavar="DIR",
                   help="folder of computed steps trials reuse (shared by workers; 'off': "
                        "none; default: [search] step_cache, else OUT/step-cache)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars: one line per trial (and per training epoch) "
                        "instead")


def load_search_recipe(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the run-recipe part, the [search] table) of a recipe file, both validated."""
    import json

    import tomllib

    from modelopt_core import recipe as rc

    from .errors import SearchError

    p = Path(path)
    if not p.is_file():
        raise SearchError(f"recipe {p}: no such file.")
    try:
        data = tomllib.loads(p.read_text()) if p.suffix == ".toml" else json.loads(
            p.read_text())
    except ValueError as e:
        raise SearchError(f"recipe {p}: cannot parse ({e}).") from e
    if not isinstance(data, dict):
        raise SearchError(f"recipe {p}: the top level must be a table.")
    search = data.pop("search", None)
    if not isinstance(search, dict):
        if "steps" in data:
            raise SearchError(f"recipe {p} is a pipeline recipe ([[steps]], no [search] "
                              f"table): run it with `modelopt run {p}`, or add a [search] "
                              "table (target, objective, max_accuracy_drop, trials...) to "
                              "search recipes for its model.")
        raise SearchError(f"recipe {p}: add a [search] table (target, objective, "
                          "max_accuracy_drop, trials...).")
    rc.check_keys(f"recipe {p}: [search]", search, _SEARCH_KEYS)
    rc.check_keys(f"recipe {p}", data, rc.TOP_KEYS - {"steps", "compare"})
    for k in ("model", "example_inputs"):
        if k not in data:
            raise SearchError(f"recipe {p}: missing required key {k!r}.")
    return data, search


def _session(args: argparse.Namespace) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(the session, the recipe's run part, its [search] table with the flags laid over it):
    from the recipe, or from --model/--calibration (no recipe: every runtime here)."""
    from modelopt_core.captured import apply_flags, nocode_args
    from modelopt_core.cli_options import nocode_session

    from .errors import SearchError

    progress = getattr(args, "progress", False)
    if args.model is not None and args.recipe is not None:
        raise SearchError(f"optimize: give a recipe ({args.recipe}) or --model, not both: "
                          "the recipe names its own model.")
    session = nocode_session(nocode_args(args), progress=progress)
    if session is None:
        if args.recipe is None:
            raise SearchError("optimize: give a search recipe, or a model with no recipe: "
                              "modelopt optimize --model model.onnx --calibration data.npz.")
        from modelopt_core.recipe import build_session

        r, search = load_search_recipe(args.recipe)
        session = build_session(args.recipe, r, progress=progress, say=lambda *a: None)
    else:
        r, search = {}, {"target": "all"}
    apply_flags(session, args)  # --calibration-from / --eval-from: captured traffic
    flags = {"target": args.target, "objective": args.objective,
             "max_accuracy_drop": args.max_accuracy_drop, "threads": args.threads}
    search = {**search, **{k: v for k, v in flags.items() if v is not None}}
    if isinstance(search.get("target"), str) and "," in search["target"]:
        search["target"] = [t.strip() for t in search["target"].split(",") if t.strip()]
    return session, r, search


def run(args: argparse.Namespace) -> int:
    """``modelopt optimize``: run (or resume) the search; print the best recipe."""
    import json

    session, r, search = _session(args)
    out = args.out or r.get("output", {}).get("dir") or "modelopt-search-out"
    trials = args.trials if args.trials is not None else search.get("trials", 20)
    res = session.optimize(
        target=search.get("target", "onnxruntime"), objective=search.get("objective", "latency"),
        max_accuracy_drop=search.get("max_accuracy_drop", 1.0), budget_trials=trials,
        time_budget_s=args.time_budget_s or search.get("time_budget_s"),
        space=search.get("space"), storage=args.storage or search.get("storage"),
        study_name=args.study_name or search.get("study_name"),
        executor="local" if getattr(args, "ray", None) is None else "ray",
        ray_address=getattr(args, "ray", None) or None,
        ray_workers=getattr(args, "ray_workers", None),
        seed=args.seed if args.seed is not None else search.get("seed", 0), out_dir=out,
        runtime_options=search.get("runtime_options"),
        profiler_options=search.get("profiler_options"), threads=search.get("threads"),
        profilers=search.get("profilers"),
        step_cache=args.step_cache or search.get("step_cache"))
    if args.json:
        print(json.dumps({"out_dir": str(res.out_dir), "best": res.best_row,
                          "best_recipe": res.best_recipe, "pareto": res.pareto}, indent=2,
                         default=str))
    else:
        from .optimize import report_columns
        from .report import UNITS, with_summary
        from .rows import summary_line

        table = res.report.to_markdown(columns=report_columns(res.report, session.pm))
        unit = UNITS.get(search.get("objective", "latency"), "")
        print(with_summary(table, summary_line(res.report.rows[1:], unit)))
        metric = getattr(session.eval_fn, "metric", None)
        if metric:
            print(f"accuracy: {metric}")
        if res.best_row:
            print(f"best: trial {res.best_row['trial']}: {res.best_row['recipe']}")
        else:
            print("no trial met the accuracy budget yet; see the report")
        names = ("study.db", "trials.json", "report.md", "report.json", "report.html",
                 "report.html.error", "best", "final-artifact")
        wrote = [n + ("/" if n in ("best", "final-artifact") else "") for n in names
                 if (res.out_dir / n).exists()]
        if "report.html" in wrote:  # the page's script, beside it
            at = wrote.index("report.html") + 1
            wrote[at:at] = sorted(f.name for f in res.out_dir.glob("plotly-*.min.js"))
        print(f"wrote {res.out_dir}/: {', '.join(wrote)}")
    return 0
