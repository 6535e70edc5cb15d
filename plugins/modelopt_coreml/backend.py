"""Backend ``coreml``: Core ML prediction (``MLModel.predict``), which only macOS provides.

Elsewhere the backend registers, reports itself unavailable ("Core ML prediction runs only on
macOS") and raises :class:`~modelopt_core.BackendUnavailableError` when used; the exporter
and the format still work there (export, save, validate, reload).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import modelopt_core as mo

from .exporter import is_macos

UNAVAILABLE = "Core ML prediction runs only on macOS"
_UNITS = {"all": "ALL", "cpu_only": "CPU_ONLY", "cpu_and_gpu": "CPU_AND_GPU",
          "cpu_and_ne": "CPU_AND_NE"}


@mo.config
class CoremlBackendConfig:
    """Options of the coreml backend."""

    compute_units: Literal["all", "cpu_only", "cpu_and_gpu", "cpu_and_ne"] = mo.field(
        "all", help="where Core ML may run the model ('cpu_and_ne': CPU + Neural Engine)")


def predict(ml: Any, input_names: Sequence[str], output_names: Sequence[str],
            arrays: Sequence[Any]) -> list[Any]:
    """Run ``ml`` (an MLModel loaded for prediction) on NumPy ``arrays``; outputs in
    ``output_names`` order (the spec's own order when the names are unknown)."""
    import numpy as np

    feeds = {n: np.ascontiguousarray(a) for n, a in zip(input_names, arrays)}
    out = ml.predict(feeds)
    names = list(output_names) or [o.name for o in ml.get_spec().description.output]
    return [np.asarray(out[n]) for n in names]


class CoremlRunner(mo.Runner):
    """An MLModel behind the Runner interface (macOS). Shared between threads, it runs one
    prediction at a time (the base class's lock: MLModel.predict through coremltools is not
    documented as re-entrant)."""

    def __init__(self, artifact: mo.ModelArtifact, model: Any, input_names: list[str],
                 output_names: list[str]) -> None:
        super().__init__(artifact, "cpu")
        self.model = model
        self.input_names, self.output_names = input_names, output_names

    def _run(self, inputs: Sequence[Any]) -> Sequence[Any]:
        import numpy as np
        import torch

        arrays = [x.detach().cpu().float().numpy() if x.is_floating_point()
                  else x.detach().cpu().numpy().astype(np.int32) for x in inputs]
        outs = predict(self.model, self.input_names, self.output_names, arrays)
        res = []
        for i, o in enumerate(outs):
            t = torch.from_numpy(np.array(o, dtype=np.float32) if o.dtype.kind == "f" else o)
            specs = self.artifact.outputs
            if i < len(specs) and not t.is_floating_point():
                t = t.to(getattr(torch, specs[i].dtype, t.dtype))
            res.append(t)
        return res

    def _release(self) -> None:
        self.model = None


class CoremlBackend(mo.Backend):
    """Core ML prediction (MLModel.predict; macOS only)."""

    name = "coreml"
    accepts = ("coreml",)
    Config = CoremlBackendConfig
    reference_for = ("coreml",)
    requires = ("coremltools",)
    install_hint = "pip install 'modelopt-core[coreml]' (coremltools), on macOS"

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        if not is_macos():
            return False, UNAVAILABLE
        return super().availability()

    def load(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.Runner:
        import coremltools as ct

        self.ensure_available()
        units = getattr(ct.ComputeUnit, _UNITS[self.config.compute_units])
        ml = artifact.model
        path = getattr(ml, "package_path", None)
        if path is None:
            raise mo.FormatError(f"coreml: {artifact.name!r} holds no Core ML package.")
        try:  # (re)load for prediction: formats load packages with skip_model_load
            model = ct.models.MLModel(path, compute_units=units)
        except Exception as e:
            raise mo.FormatError(f"coreml: Core ML cannot load {artifact.name!r}: {e}") from e
        spec = model.get_spec()
        ins = [s.name for s in artifact.inputs] or [i.name for i in spec.description.input]
        outs = [s.name for s in artifact.outputs] or [o.name for o in spec.description.output]
        return CoremlRunner(artifact, model, ins, outs)
