"""modelopt: make trained PyTorch models smaller and faster, and prove it with measurements.

The public API. ``import modelopt_core`` stays light: it never imports onnxruntime, tensorrt
or pycuda (plugins import their heavy dependencies when used).
"""

from __future__ import annotations

from . import data, recipe, sparsity, training
from .artifact import ArtifactProps, ModelArtifact, Step, TensorSpec, load_artifact
from .config import (build_config, choice, config, config_fields, config_to_data, field,
                     floats, in_range, ints, parse_options, positive, search_space,
                     space_from_data)
from .data import check_batch
from .training import kd_loss
from .errors import (AccuracyBudgetError, ArtifactError, ArtifactWriteError, BackendUnavailableError, ConfigError,
                     DataError, DuplicateComponentError, ExportError, FormatError, InputSpecError,
                     ModeloptError, NoExportPathError, NumericalError, PluginLoadError,
                     RunnerClosedError, StepError, TrainingError, UnknownComponentError,
                     UnsafeArtifactError)
from .hookspecs import hookimpl
from .interfaces import (Backend, Component, Context, Exporter, Format, Optimizer, Profiler,
                         Runner, as_input_tuple)
from .numerics import check_finite_weights, first_nonfinite
from .plugins import PluginManager, get_plugin_manager, load_runner
from .quiet import quiet
from .report import Report
from .stats import bootstrap_ratio_ci, latency_verdict
from .session import Session
from .steps import RecipeStep
from .plan import Plan
from .step_cache import StepCache
from .environment import cpu_flags
from .verify import (check_inputs_for, check_outputs, check_reference, max_errors,
                     reference_outputs, tile_batch)
# the rest of the public face for plugins (docs/plugin-authors.md, "The public face"); the
# submodules they come from are private (tests/unit/test_architecture.py enforces it)
from .config import Choice
from .environment import describe_environment
from .interfaces import Column
from .io import (export_dynamic_shapes, flatten_outputs, leaf_names, order_inputs,
                 structured_view, unflatten_outputs)
from .manifest import read_json
from .persist import write_text_atomic
from .plugins import CORE_DISTRIBUTION
from .report_html import ReportDependencyError
from .structure import check_records, rebuild_structure, record_structure

#: raw-bytes format (engine blobs); subclass it with a ``name`` to register such a format
from .interfaces import BytesFormat
from ._version import __version__

__all__ = [
    "Session", "ModelArtifact", "ArtifactProps", "TensorSpec", "Step", "load_artifact", "Report",
    "Optimizer", "Exporter", "Backend", "Runner", "Profiler", "Format", "BytesFormat", "Component", "Context",
    "as_input_tuple", "hookimpl", "PluginManager", "get_plugin_manager", "load_runner",
    "config", "field", "build_config", "config_to_data", "config_fields", "in_range",
    "positive", "choice", "ints", "floats", "search_space", "space_from_data", "parse_options",
    "ModeloptError", "AccuracyBudgetError", "ConfigError", "UnknownComponentError", "FormatError", "NoExportPathError",
    "PluginLoadError", "DuplicateComponentError", "ArtifactError", "ArtifactWriteError",
    "UnsafeArtifactError",
    "InputSpecError", "RunnerClosedError", "StepError", "DataError",
    "BackendUnavailableError", "NumericalError", "ExportError",
    "TrainingError", "__version__", "recipe", "training", "sparsity", "kd_loss",
    "quiet", "data", "check_batch", "first_nonfinite", "check_finite_weights",
    "check_outputs", "check_reference", "cpu_flags",
    "check_inputs_for", "reference_outputs", "tile_batch", "max_errors",
    "Choice", "describe_environment", "export_dynamic_shapes", "flatten_outputs", "leaf_names",
    "order_inputs", "structured_view", "unflatten_outputs", "read_json", "write_text_atomic",
    "CORE_DISTRIBUTION", "ReportDependencyError", "check_records", "rebuild_structure",
    "record_structure", "Column", "bootstrap_ratio_ci", "latency_verdict",
    "RecipeStep", "Plan", "StepCache",
]
