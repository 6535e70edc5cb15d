"""The plan of a list of :class:`~modelopt_core.steps.RecipeStep`: everything that can be
checked before anything runs, in one place. Each step's component exists and takes its
config, the formats chain (an export has a path, an optimizer accepts the format it gets),
each step finds the data it needs, and every component runs on this machine (its optional
dependencies and hardware). :meth:`Session.plan <modelopt_core.Session.plan>`, ``modelopt
run``/``--dry-run``, the search and :meth:`Context.export` all use it, and
:func:`export_chain` is the one builder of exporter chains.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from .errors import BackendUnavailableError, ConfigError, FormatError, ModeloptError
from .steps import RecipeStep, as_steps

__all__ = ["UNAVAILABLE", "Plan", "PlannedStep", "export_chain", "plan_steps",
           "unavailable_line"]

#: how a plan line naming what this machine lacks starts
UNAVAILABLE = "not available here: "


def export_chain(pm: Any, source: str, target: str,
                 config: dict[str, Any] | None = None) -> list[Any]:
    """The exporter instances from format ``source`` to ``target`` (shortest chain),
    ``config`` going to the last one; each link's config is checked here (typed errors),
    availability is not (see :func:`unavailable_line`). ``[]`` when ``source`` is
    ``target``."""
    chain = pm.export_path(source, target)
    return [info.cls(**((config or {}) if i == len(chain) - 1 else {}))
            for i, info in enumerate(chain)]


def unavailable_line(where: str, kind: str, cls: Any) -> list[str]:
    """``[]`` when component ``cls`` runs here, else the plan's line saying why not."""
    ok, why = cls.availability()
    return [] if ok else [f"{UNAVAILABLE}{where}: {kind} {cls.name!r} ({why})"]


@attrs.frozen
class PlannedStep:
    """One checked step: the step, the format it gets and makes, its components (exporter
    chain or optimizer), the data it needs."""

    step: RecipeStep
    source: str
    format: str
    components: tuple[Any, ...]
    needs: tuple[str, ...] = ()


@attrs.frozen
class Plan:
    """The checked steps, the formats the pipeline makes (the source's first), the plan as
    lines (one per step) and one line per component this machine lacks
    (``unavailable``)."""

    steps: tuple[PlannedStep, ...]
    formats: tuple[str, ...]
    lines: tuple[str, ...]
    unavailable: tuple[str, ...] = ()

    @property
    def runnable(self) -> bool:
        """Whether every component of the plan runs on this machine."""
        return not self.unavailable

    @property
    def needs(self) -> tuple[str, ...]:
        """The data the steps need (``calibration_data``, ``train_data``, ``eval_fn``)."""
        return tuple(dict.fromkeys(n for st in self.steps for n in st.needs))

    def raise_unavailable(self, what: str = "the steps") -> None:
        """:class:`BackendUnavailableError` naming each step this machine cannot run."""
        if self.unavailable:
            said = "; ".join(m[len(UNAVAILABLE):] for m in self.unavailable)
            raise BackendUnavailableError(
                f"{what} cannot run on this machine, so nothing was run: {said}. Run them "
                "where those are available (install what the reasons name), or drop those "
                "steps.")

    def to_lines(self) -> list[str]:
        """The plan lines, then the ``not available here: ...`` lines."""
        return list(self.lines) + list(self.unavailable)


def plan_steps(pm: Any, steps: Iterable[Any], source: str = "torch",
               has: Callable[[str], bool] | None = None, data_hint: str = "",
               where: str = "recipe step", first: int = 1) -> Plan:
    """Check ``steps`` (see the module doc) from an artifact of format ``source``; ``has``
    says whether a data field is given (None: assume it is), ``data_hint`` how to give a
    missing one. The first problem raises :class:`ConfigError` naming ``where`` and the
    step's number (counted from ``first``); an unavailable component is a line of the plan's
    ``unavailable`` (the steps are valid, but cannot run here)."""
    fmt = source
    planned: list[PlannedStep] = []
    lines: list[str] = []
    missing: list[str] = []
    for i, st in enumerate(as_steps(steps, where), start=first):
        at = f"{where} {i} ({st.verb} {st.name!r})"
        try:
            comps, out, needs = _check(pm, st, fmt, has, data_hint)
        except ModeloptError as e:
            raise ConfigError(f"{at}: {e}") from e
        kind = "exporter" if st.verb == "export" else "optimizer"
        for c in comps:
            missing += unavailable_line(at, kind, type(c))
        planned.append(PlannedStep(st, fmt, out, tuple(comps), needs))
        lines.append(f"step {i}: {st.verb} {st.name} {st.config or ''} -> {out}"
                     .replace(" {}", "").replace("  ->", " ->"))
        fmt = out
    return Plan(tuple(planned), (source, *(p.format for p in planned)), tuple(lines),
                tuple(dict.fromkeys(missing)))


def _check(pm: Any, st: RecipeStep, fmt: str, has: Callable[[str], bool] | None,
           data_hint: str) -> tuple[Sequence[Any], str, tuple[str, ...]]:
    """(the step's component instances, the format it makes, the data it needs)."""
    if st.verb == "export":
        if fmt == st.name:
            raise FormatError(f"the artifact is already {st.name!r}; drop this export.")
        return export_chain(pm, fmt, st.name, st.config), st.name, ()
    cls = pm.get("optimizer", st.name).cls
    inst = cls(**st.config)
    if fmt not in cls.accepts:
        raise ConfigError(f"{st.name!r} takes {list(cls.accepts)} artifacts but gets "
                          f"{fmt!r} here; add an export step before it.")
    lacking = [n for n in cls.needs if has is not None and not has(n)]
    if lacking:
        raise ConfigError(f"{st.name!r} needs {list(cls.needs)}: {data_hint or 'give it.'}")
    return [inst], fmt, tuple(cls.needs)
