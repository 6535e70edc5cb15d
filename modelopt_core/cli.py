"""The ``modelopt`` command: ``plugins``, ``describe``, ``run`` (and what plugins add:
``demo``, ``optimize``, ``serve``, ...).

``modelopt --version``; ``python -m modelopt_core`` works the same. Errors print one line
naming the step, field or file; ``--verbose`` adds the traceback and debug logging,
``--quiet`` keeps only the results and errors.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from .cli_options import add_model_options, model_options  # noqa: F401 (re-exported)
from .errors import ModeloptError

_EXAMPLES = {
    "plugins": """examples:
  modelopt plugins                 every component, its formats and availability here, and
                                   the commands and services plugins add
  modelopt plugins --json          the same as JSON (for scripts)""",
    "describe": """examples:
  modelopt describe onnx.quantize_static    options, types, defaults and help of a component
  modelopt describe latency --json
  modelopt describe serve                   a command: which plugin adds it, and its help""",
    "run": """examples:
  modelopt run docs/recipes/digits-int8.toml
  modelopt run recipe.toml --dry-run          check components, export chains and data needs
                                              (exit 1: a component is not available here)
  modelopt run recipe.toml --json --out out/  the report as JSON on stdout, files in out/
  modelopt run --model model.onnx --calibration calib.npz
                                              no recipe: INT8 (ONNX Runtime static
                                              quantization), measured; final-artifact/ the
                                              fastest within 1 accuracy point
  modelopt run --model model.onnx --calibration calib/ --eval eval.npz steps.toml
                                              a recipe's [[steps]]/[compare]/[output] on it""",
}


def _plugins(args: argparse.Namespace) -> int:
    from .plugins import get_plugin_manager

    summary = get_plugin_manager().summary()
    summary["devices"] = _devices()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    for name, p in sorted(summary["plugins"].items()):
        print(f"{name}  ({p['distribution']} {p['version']})")
        for c in p["components"]:
            state = "ok" if c["available"] else f"unavailable: {c['reason']}"
            fmt = ",".join(c["accepts"]) + (f"->{c['produces']}" if c["produces"] else "")
            print(f"  {c['kind']:<9} {c['name']:<24} {fmt:<14} {state}")
    for kind, title in (("commands", "commands (modelopt COMMAND --help)"),
                        ("services", "services")):
        if summary[kind]:
            print(f"{title}:")
        for c in summary[kind]:
            origin = f"{c['plugin']} ({c['distribution']})"
            print(f"  {c['name']:<12} {origin:<24} {c['help']}")
    for f in summary["failed"]:
        print(f"FAILED {f['name']} ({f['distribution']}): {f['error']}")
    print(f"devices: {summary['devices']['summary']}")
    return 0


def _devices() -> dict[str, Any]:
    """What torch backends can run on here, read without importing torch (fast): the build
    tag of the installed torch and whether an NVIDIA driver is loaded."""
    import importlib.metadata as md
    from pathlib import Path

    try:
        version = md.version("torch")
    except md.PackageNotFoundError:
        return {"torch": None, "cuda": False, "summary": "torch is not installed"}
    driver = Path("/proc/driver/nvidia/version").exists()
    cpu_build = "+cpu" in version
    cuda = driver and not cpu_build
    why = ("CPU-only torch build" if cpu_build else
           "no NVIDIA driver loaded" if not driver else "CUDA build, NVIDIA driver present")
    return {"torch": version, "cuda": cuda,
            "summary": f"cpu{', cuda' if cuda else ''} (torch {version}: {why}; "
                       f"device='cuda' {'may work' if cuda else 'is unavailable here'})"}


def _describe(args: argparse.Namespace) -> int:
    import attrs

    from .config import config_fields
    from .errors import UnknownComponentError
    from .plugins import KINDS, get_plugin_manager

    pm = get_plugin_manager()
    found = [i for k in KINDS for i in pm.components(k) if i.name == args.component]
    commands = _parser_and_commands()[1]
    if not found and args.component not in commands:
        names = [i.name for i in pm.components()] + list(commands)
        from .errors import close_names

        hint = close_names(args.component, names)
        raise UnknownComponentError(
            f"no component or command named {args.component!r}"
            + (f"; did you mean {', '.join(map(repr, hint))}?" if hint else "")
            + " Run `modelopt plugins` for the list.")
    out = [] if args.component not in commands else [
        _describe_command(args.component, commands[args.component])]
    for info in found:
        ok, why = info.cls.availability()
        options = []
        for name, a in config_fields(info.cls.Config).items():
            default: Any = a.default
            if default is attrs.NOTHING:
                default = "(required)"
            elif isinstance(default, attrs.Factory):  # type: ignore[arg-type]
                default = default.factory()
            options.append({"name": name, "type": _type_name(a.type), "default": default,
                            "help": a.metadata.get("help", ""),
                            **({"search": a.metadata["search"].to_data()}
                               if "search" in a.metadata else {}),
                            **({"aliases": list(a.metadata["aliases"])}
                               if a.metadata.get("aliases") else {})})
        out.append({"kind": info.kind, "name": info.name, "plugin": info.plugin,
                    "distribution": info.distribution, "version": info.version,
                    "description": (info.cls.__doc__ or "").strip(),
                    "available": ok, "reason": why, "options": options})
    if args.json:
        print(json.dumps(out, indent=2, default=repr))
        return 0
    for d in out:
        if d["kind"] == "command":
            origin = (f"of plugin {d['plugin']!r} ({d['distribution']})" if d["plugin"]
                      else f"of modelopt itself ({d['distribution']})")
            print(f"command `modelopt {d['name']}`: a command {origin}\n")
            print(d["help"])
            continue
        state = "available" if d["available"] else f"unavailable: {d['reason']}"
        print(f"{d['kind']} {d['name']}  ({d['distribution']} {d['version']}; {state})")
        print(f"  {d['description']}\n")
        if not d["options"]:
            print("  (no options)")
        for o in d["options"]:
            print(f"  {o['name']}: {o['type']} = {o['default']!r}")
            if o["help"]:
                print(f"      {o['help']}")
            if o.get("search"):
                print(f"      searched by `modelopt optimize` over {o['search']}")
            if o.get("aliases"):
                print(f"      deprecated old name(s), still accepted: {', '.join(o['aliases'])}")
    return 0


def _describe_command(name: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """What ``modelopt describe`` says of a subcommand: the plugin that adds it (none for the
    core's own) and its ``--help`` text."""
    from .plugins import CORE_DISTRIBUTION, get_plugin_manager

    info = next((c for c in get_plugin_manager().commands() if c.name == name), None)
    return {"kind": "command", "name": name, "plugin": info.plugin if info else "",
            "distribution": info.distribution if info else CORE_DISTRIBUTION,
            "description": info.help if info else (parser.description or ""),
            "help": parser.format_help()}


def _type_name(tp: Any) -> str:
    text = tp if isinstance(tp, str) else getattr(tp, "__name__", repr(tp))
    return str(text).replace("typing.", "")


def _run(args: argparse.Namespace) -> int:
    from .cli_options import nocode_session
    from .recipe import run_recipe

    quiet = args.quiet or args.json
    say = (lambda *a, **k: None) if quiet else print
    session = nocode_session(args, progress=args.progress)
    if session is None and args.recipe is None:
        from .errors import ConfigError

        raise ConfigError("run: give a recipe, or a model with no recipe: modelopt run "
                          "--model model.onnx --calibration data.npz.")
    if args.dry_run:
        return _dry_run(args, session)
    if session is not None:
        from .nocode_run import run_nocode

        report = run_nocode(args, session, say)
    else:
        report = run_recipe(args.recipe, progress=args.progress, out_dir=args.out, say=say)
    if args.json:
        print(report.to_json())
    else:
        report.print()
    return 0


def _dry_run(args: argparse.Namespace, session: Any = None) -> int:
    """``modelopt run --dry-run``: the plan; exit 1 when a component the recipe uses cannot
    run on this machine (the recipe is valid, but a run here would stop). ``session``: the
    model of ``--model`` (loaded, its data checked)."""
    from .recipe import UNAVAILABLE, plan_recipe, unavailable_here

    if session is not None:
        from .nocode_run import dry_run

        lines = dry_run(args, session)
    else:
        lines = plan_recipe(args.recipe)
    missing = unavailable_here(lines)
    if args.json:
        print(json.dumps({"recipe": args.recipe, "ok": not missing, "valid": True,
                          "runnable": not missing, "plan": lines,
                          "unavailable": [m[len(UNAVAILABLE):] for m in missing]}, indent=2))
    else:
        print("\n".join(lines) + ("\nrecipe valid but not runnable here (nothing was run)"
                                  if missing else "\nrecipe OK (nothing was run)"))
    if missing:
        print(f"modelopt run: the recipe is valid but cannot run on this machine: "
              f"{len(missing)} component(s) not available here (listed above); a run here "
              "would stop before building the model.", file=sys.stderr)
        return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    return _parser_and_commands()[0]


def _parser_and_commands() -> tuple[argparse.ArgumentParser,
                                    dict[str, argparse.ArgumentParser]]:
    """The ``modelopt`` parser and its subcommands' parsers by name (core's and plugins')."""
    from ._version import __version__

    def verbosity(default: Any) -> argparse.ArgumentParser:
        p = argparse.ArgumentParser(add_help=False)
        g = p.add_mutually_exclusive_group()
        g.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="only results and errors: no progress bars or step lines")
        g.add_argument("-v", "--verbose", action="store_true", default=default,
                       help="debug logging, and the full traceback on errors")
        return p

    # the flags work before or after the command; the command's copy must not reset them
    common = verbosity(argparse.SUPPRESS)
    ap = argparse.ArgumentParser(
        prog="modelopt", parents=[verbosity(False)],
        description="Make trained PyTorch models smaller and faster for deployment, and prove "
                    "it with measurements: prune -> distill -> quantize -> export -> benchmark.",
        epilog="Run `modelopt COMMAND --help` for a command's options and examples.")
    ap.add_argument("--version", action="version", version=f"modelopt {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def add(name: str, help: str, fn: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, parents=[common],
                           epilog=_EXAMPLES[name],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(fn=fn)
        return p

    p = add("plugins", "list installed plugins, their components and availability", _plugins)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = add("describe", "show a component's description and every option, or which plugin "
                        "adds a command and its help", _describe)
    p.add_argument("component", help="component or command name, e.g. onnx.quantize_static "
                                     "or serve")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = add("run", "run a pipeline recipe (TOML/JSON): model, data, steps, comparison; or "
                   "a model file with no recipe (--model model.onnx --calibration data.npz)",
            _run)
    p.add_argument("recipe", nargs="?",
                   help="path to the recipe file (with --model: its [[steps]], [compare] and "
                        "[output] only; without one, --model gets the default pipeline)")
    add_model_options(p, original=True)
    p.add_argument("--dry-run", action="store_true",
                   help="check the recipe (components, configs, export chains, data needs, "
                        "backends) without running it; exit 1 when a component it uses is "
                        "not available on this machine")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--out", help="write report.md, report.json, report.html and the final "
                                 "artifact (final-artifact/) here (overrides the recipe's "
                                 "[output] dir; with --model, default modelopt-run-out)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars: one line per training epoch instead")
    _plugin_commands(sub, common)
    return ap, dict(sub.choices)


def _plugin_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Subcommands added by plugins (hook ``register_commands``): serve, optimize, ..."""
    from .plugins import get_plugin_manager

    for cmd in get_plugin_manager().commands():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help, parents=[common],
                           epilog=cmd.examples or None,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        cmd.setup(p)
        p.set_defaults(fn=cmd.run)


class _ProgressLines(logging.Handler):
    """Prints the progress lines (one per training epoch, one per search trial) to the
    current ``sys.stderr``, indented, as the command's own step lines are."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"  {self.format(record)}", file=sys.stderr, flush=True)


def _show_progress_lines(show: bool) -> None:
    """Route the ``modelopt.progress`` logger (see ``modelopt_core.training.PROGRESS_LOG``)
    to stderr: its lines show with ``--no-progress`` too, not with ``--quiet``."""
    log = logging.getLogger("modelopt.progress")
    for h in [h for h in log.handlers if isinstance(h, _ProgressLines)]:
        log.removeHandler(h)
    log.addHandler(_ProgressLines())
    log.setLevel(logging.INFO if show else logging.WARNING)
    log.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``modelopt`` console script."""
    args = _parser().parse_args(argv)
    if getattr(args, "quiet", False) and hasattr(args, "progress"):
        args.progress = False
    logging.basicConfig(level=logging.DEBUG if args.verbose else
                        logging.ERROR if args.quiet else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    _show_progress_lines(not args.quiet)
    try:
        return args.fn(args)
    except ModeloptError as e:
        if args.verbose:
            traceback.print_exc()
        print(f"modelopt {args.cmd}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"modelopt {args.cmd}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug or a library's error: one line unless --verbose
        if args.verbose:
            traceback.print_exc()
        print(f"modelopt {args.cmd}: unexpected {type(e).__name__}: {e} (run with --verbose "
              "for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
