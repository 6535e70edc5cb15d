"""The ``modelopt`` command: ``modelopt plugins [--json]``, ``modelopt demo``,
``modelopt run RECIPE``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .errors import ModeloptError


def _plugins(args: argparse.Namespace) -> int:
    from .plugins import get_plugin_manager

    summary = get_plugin_manager().summary()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    for name, p in sorted(summary["plugins"].items()):
        print(f"{name}  ({p['distribution']} {p['version']})")
        for c in p["components"]:
            state = "ok" if c["available"] else f"unavailable: {c['reason']}"
            fmt = c.get("formats", "")
            fmt = ",".join(fmt) if isinstance(fmt, list) else fmt
            print(f"  {c['kind']:<9} {c['name']:<24} {fmt:<14} {state}")
    for f in summary["failed"]:
        print(f"FAILED {f['name']} ({f['distribution']}): {f['error']}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    try:
        from modelopt_demo.demo import run_demo
    except ImportError as e:
        print(f"modelopt demo: the demo package is not installed ({e}).", file=sys.stderr)
        return 2
    run_demo(args.out, epochs=args.epochs, progress=not args.no_progress)
    return 0


def _run(args: argparse.Namespace) -> int:
    from .recipe import run_recipe

    run_recipe(args.recipe, progress=not args.no_progress)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``modelopt`` console script."""
    ap = argparse.ArgumentParser(prog="modelopt", description="Make PyTorch models smaller "
                                 "and faster, and prove it with measurements.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plugins", help="list plugins, components and their availability")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=_plugins)
    d = sub.add_parser("demo", help="train a digits CNN offline, optimize it, compare")
    d.add_argument("--out", default="modelopt-demo-out", help="folder for report + artifact")
    d.add_argument("--epochs", type=int, default=8, help="training epochs")
    d.add_argument("--no-progress", action="store_true", help="hide progress bars")
    d.set_defaults(fn=_demo)
    r = sub.add_parser("run", help="run a recipe (TOML/JSON): model, data, steps, compare")
    r.add_argument("recipe", help="path to the recipe file")
    r.add_argument("--no-progress", action="store_true", help="hide progress bars")
    r.set_defaults(fn=_run)
    args = ap.parse_args(argv)
    try:
        return args.fn(args)
    except ModeloptError as e:
        print(f"modelopt {args.cmd}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
