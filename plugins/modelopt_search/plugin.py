"""Entry point of modelopt_search: the ``modelopt optimize`` and ``modelopt compare``
commands. Nothing heavy is imported here (optuna, torch load inside the commands)."""

from __future__ import annotations

import argparse
from typing import Any

import modelopt_core as mo


def _optimize_setup(p: argparse.ArgumentParser) -> None:
    from .command import setup

    setup(p)


def _optimize_run(args: argparse.Namespace) -> int:
    from .command import run

    return run(args)


def _compare_setup(p: argparse.ArgumentParser) -> None:
    try:
        from .ab import setup_compare
    except ImportError:  # the A/B module is not installed in this build
        p.add_argument("a")
        p.add_argument("b")
        return
    setup_compare(p)


def _compare_run(args: argparse.Namespace) -> int:
    try:
        from .ab import run_compare
    except ImportError as e:
        raise mo.ModeloptError(f"modelopt compare is not available in this build ({e}).") from e
    return run_compare(args)


@mo.hookimpl
def register_commands(register: Any) -> None:
    """``modelopt optimize`` (recipe search) and ``modelopt compare`` (A/B of two artifacts)."""
    from .command import EXAMPLES

    register("optimize", help="search prune/distill/quantize/runtime recipes under an "
                              "accuracy budget, measured on the real runtime (Optuna)",
             setup=_optimize_setup, run=_optimize_run, examples=EXAMPLES)
    register("compare", help="A/B-compare two saved artifacts: latency with a bootstrap CI "
                             "of the p50 ratio, accuracy, size",
             setup=_compare_setup, run=_compare_run,
             examples="examples:\n  modelopt compare out/a out/b")


def _search(session: mo.Session, *args: Any, **kwargs: Any) -> Any:
    """The ``search`` service: :func:`.optimize.optimize` (optuna loads here, on first use)."""
    try:
        from .optimize import optimize
    except ImportError as e:
        raise mo.ModeloptError(f"Session.optimize needs optuna ({e}): "
                               'pip install "modelopt-core[search]"') from e
    return optimize(session, *args, **kwargs)


@mo.hookimpl
def register_services(register: Any) -> None:
    """``search``: what ``Session.optimize`` runs (the core never imports this plugin)."""
    register("search", _search, help="recipe search under an accuracy budget")
