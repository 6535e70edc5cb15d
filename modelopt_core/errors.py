"""One exception hierarchy for everything modelopt raises on purpose.

Every error names the step, field or file at fault and says what to do next. Catch
:class:`ModeloptError` to handle them all.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ModeloptError(Exception):
    """Base class of every error modelopt raises deliberately."""


class ConfigError(ModeloptError, ValueError):
    """A component configuration is invalid (unknown key, wrong type, value out of range)."""


class UnknownComponentError(ModeloptError, KeyError):
    """No registered component has the requested name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class FormatError(ModeloptError):
    """A component was given an artifact in a format it does not accept."""


class NoExportPathError(FormatError):
    """No chain of exporters leads from the artifact's format to the requested one."""


class PluginLoadError(ModeloptError):
    """A plugin's entry point failed to import or to register (strict mode only)."""


class DuplicateComponentError(ModeloptError):
    """Two plugins registered components of the same kind under one name."""


class ArtifactError(ModeloptError):
    """An artifact on disk cannot be read: missing, corrupt, truncated or hash mismatch."""


class ArtifactWriteError(ArtifactError, OSError):
    """Saving an artifact failed (disk full, read-only folder...). ``errno`` and ``path`` are
    set; the previous artifact at the path is unchanged and no temporary folder is left."""

    path: str = ""


class UnsafeArtifactError(ArtifactError):
    """An artifact would need unsafe loading (pickle, path traversal); it is refused."""


class InputSpecError(ModeloptError, ValueError):
    """Inputs given to a runner do not match the model's input specification."""


class DataError(ModeloptError, ValueError):
    """Session data (calibration, training, evaluation) is missing, empty or unusable."""


class RunnerClosedError(ModeloptError):
    """A runner was called after ``close()``."""


class BackendUnavailableError(ModeloptError):
    """A component's optional dependency or hardware is missing on this machine."""


class NumericalError(ModeloptError, ArithmeticError):
    """NaN/Inf or another numerical failure; the message names the layer or step."""


class ExportError(ModeloptError):
    """An exporter failed or its result disagrees numerically with the source model."""


class AccuracyBudgetError(ModeloptError):
    """A step dropped the session's eval_fn by more than ``max_accuracy_drop``; the step stays
    in the history, marked rejected (``Session.discard()`` drops it)."""


class StepError(ModeloptError):
    """A component raised an error of its own (a library's) while running a step; the
    message names the step, the original exception is chained as ``__cause__``."""


class TrainingError(ModeloptError):
    """Training failed (NaN loss, no data); the last good weights are kept."""


def close_names(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Return up to ``n`` names from ``candidates`` that look like ``name`` (for error hints)."""
    return difflib.get_close_matches(name, sorted(candidates), n=n, cutoff=0.5)
