"""Pipelines as data: :class:`RecipeStep`, one step of a pipeline as plain, serializable data
(``verb``, ``name``, ``config``), and the one step runner every caller uses
(:meth:`Session.run <modelopt_core.Session.run>`, ``modelopt run``, the search's trials).

A recipe file's ``[[steps]]`` entry (``{"apply": "onnx.quantize_static", "per_channel":
true}``) and a step's data (``{"verb": "apply", "name": "onnx.quantize_static", "config":
{"per_channel": true}}``) are two spellings of one :class:`RecipeStep`: a search trial, a
worker in another process or on another host gets the same steps as JSON and runs them the
same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from .errors import ConfigError, ModeloptError

__all__ = ["VERBS", "RecipeStep", "as_steps", "run_steps"]

#: what a step does: ``apply`` an optimizer, ``export`` to a format
VERBS = ("apply", "export")


def _config(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else value


@attrs.frozen(hash=False)
class RecipeStep:
    """One pipeline step as plain data: ``verb`` (``"apply"``: optimizer ``name``;
    ``"export"``: to format ``name``) and its ``config`` (JSON values; an export's goes to
    the last exporter of the chain). ``to_data``/``from_data`` round-trip through JSON."""

    verb: str
    name: str
    config: dict[str, Any] = attrs.field(factory=dict, converter=_config)

    def __attrs_post_init__(self) -> None:
        if self.verb not in VERBS:
            raise ConfigError(f"RecipeStep: verb must be one of {list(VERBS)}, got "
                              f"{self.verb!r}.")
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"RecipeStep({self.verb}): name must be a component or format "
                              f"name, got {self.name!r}.")
        if not isinstance(self.config, dict) or not all(isinstance(k, str)
                                                         for k in self.config):
            raise ConfigError(f"RecipeStep({self.verb} {self.name!r}): config must be a table "
                              f"of named options, got {self.config!r}.")
        try:
            json.dumps(self.config)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"RecipeStep({self.verb} {self.name!r}): config must hold plain "
                              f"JSON values (numbers, strings, lists, tables): {e}.") from None

    def __hash__(self) -> int:  # equal steps hash alike (1 == 1.0: the option names only)
        return hash((self.verb, self.name, tuple(sorted(self.config))))

    def to_data(self) -> dict[str, Any]:
        """``{"verb": ..., "name": ..., "config": {...}}`` (a deep copy)."""
        return {"verb": self.verb, "name": self.name,
                "config": json.loads(json.dumps(self.config))}

    @classmethod
    def from_data(cls, data: Any, where: str = "step") -> RecipeStep:
        """From :meth:`to_data`'s form or a recipe's ``{"apply": name, **config}`` form;
        :class:`ConfigError` naming ``where`` otherwise."""
        if isinstance(data, RecipeStep):
            return data
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: a step must be a table, got {type(data).__name__}.")
        if "verb" in data:
            unknown = sorted(set(data) - {"verb", "name", "config"})
            if unknown or "name" not in data:
                raise ConfigError(f"{where}: a step's data holds verb, name and config, got "
                                  f"{sorted(data)}.")
            return cls(data["verb"], data["name"], data.get("config") or {})
        verbs = [v for v in VERBS if v in data]
        if len(verbs) != 1:
            raise ConfigError(f"{where} needs exactly one of 'apply' (an optimizer name) or "
                              f"'export' (a target format), got {dict(data)}.")
        config = {k: v for k, v in data.items() if k != verbs[0]}
        return cls(verbs[0], data[verbs[0]], config)

    def to_recipe(self) -> dict[str, Any]:
        """The recipe file's spelling: ``{"apply": name, **config}``."""
        return {self.verb: self.name, **self.to_data()["config"]}

    def describe(self) -> str:
        """``apply prune.structured {'ratio': 0.3}`` (the plan's words)."""
        return f"{self.verb} {self.name}" + (f" {self.config}" if self.config else "")


def as_steps(steps: Iterable[Any], where: str = "recipe step") -> list[RecipeStep]:
    """``steps`` (RecipeSteps, their data or recipe tables) as RecipeSteps; the error of a
    bad one names ``where`` and its number (from 1)."""
    if isinstance(steps, (RecipeStep, Mapping, str)):
        raise ConfigError(f"{where}s must be a list of steps, got {type(steps).__name__}.")
    return [RecipeStep.from_data(st, f"{where} {i + 1}") for i, st in enumerate(steps)]


def run_steps(session: Any, steps: Iterable[Any], say: Callable[[str], Any] | None = None,
              where: str = "recipe step", first: int = 1) -> Any:
    """Run ``steps`` on ``session``: planned first (:meth:`Session.plan`: every config,
    format, data need and availability is checked, and a step this machine cannot run
    refuses the whole list before anything runs), then each applied or exported in turn. An
    error keeps its type and names the step (``where`` and its number, counted from
    ``first``); ``say`` receives a line per finished step. Returns the newest artifact."""
    steps = as_steps(steps, where)
    session.plan(steps, where=where, first=first).raise_unavailable(where)
    for i, st in enumerate(steps, start=first):
        try:
            art = getattr(session, st.verb)(st.name, **st.config)
        except ModeloptError as e:  # same error type, with the step it came from
            raise type(e)(f"{where} {i} ({st.verb} {st.name!r}): {e}") from e
        if say is not None:
            say(f"step {i}: {st.verb} {st.name} -> {art.format} "
                f"({art.lineage[-1].duration_s:.1f} s)")
    return session.current


def check_output(inst: Any, art: Any, out: Any) -> None:
    """The component contract: ``inst`` run on ``art`` returned a new artifact with exactly
    one more lineage step (:class:`ModeloptError` naming the component otherwise)."""
    from .artifact import ModelArtifact

    if not isinstance(out, ModelArtifact) or len(out.lineage) != len(art.lineage) + 1:
        raise ModeloptError(f"{inst.kind} {inst.name!r} broke the contract: it must return a "
                            "new ModelArtifact with exactly one more lineage step.")


def run_checked(inst: Any, art: Any, fn: Callable[[], Any]) -> Any:
    """``fn()`` (component ``inst`` on ``art``): a library's own error becomes a
    :class:`StepError` naming the component, and the result is held to the contract
    (:func:`check_output`)."""
    from .errors import StepError

    try:
        out = fn()
    except ModeloptError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise StepError(f"{inst.kind} {inst.name!r} failed on {art.name!r} ({art.format}): "
                        f"{type(e).__name__}: {first}. The original exception is chained (see "
                        "__cause__).") from e
    check_output(inst, art, out)
    return out


def fork_session(s: Any, artifact: Any, progress: bool | None, accuracy_gate: bool) -> Any:
    """:meth:`Session.fork <modelopt_core.Session.fork>`."""
    import copy

    art = artifact if artifact is not None else s.current
    at = next((i for i, a in enumerate(s.history) if a is art), None)
    if at is not None:  # a branch of this history: the same original, gate and data
        fork = copy.copy(s)
        fork._history = list(s.history[:at + 1])
    else:  # a new root: its own original (and accuracy baseline)
        calibration = s.calibration_data
        if s.holdout_batches:  # given back: the fork's gate holds back its own
            calibration = list(calibration or []) + list(s.holdout_batches)
        gate = s.gate if accuracy_gate else None
        fork = type(s)(art, s.example_inputs, calibration_data=calibration,
                       train_data=s.train_data, eval_fn=s.eval_fn, task_loss=s.task_loss,
                       device=s.device, plugins=s.pm, progress=s.progress,
                       max_accuracy_drop=None if gate is None else gate.max_drop,
                       on_budget="raise" if gate is None else gate.on_budget,
                       recover=s.recover, step_cache=s.step_cache)
    if progress is not None:
        fork.progress = bool(progress)
    if not accuracy_gate:
        fork.gate = None
    return fork
