"""A deployment format the core has never heard of: ``example.npz``.

A stack of ``Flatten`` / ``Linear`` / ``ReLU`` layers becomes plain NumPy: a ``graph.json``
listing the layers and one ``weights/<i>.npy`` file per tensor (a multi-file format, as
OpenVINO's ``.xml`` + ``.bin`` or a Core ML package are). Three components make it a complete
target: the exporter ``example.npz`` (torch -> example.npz), the Format ``example.npz`` (how
it lives in an artifact folder: the core adds the manifest, the hashes and the crash-safe
swap) and the backend ``example.numpy`` (runs it with NumPy matmuls, torch in, torch out).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import modelopt_core as mo

FORMAT = "example.npz"


class NpzExporter(mo.Exporter):
    """torch -> example.npz, for nn.Sequential stacks of Flatten / Linear / ReLU."""

    name = FORMAT
    source = "torch"
    target = FORMAT

    def export(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.ModelArtifact:
        import numpy as np
        import torch

        layers: list[dict[str, Any]] = []
        for i, mod in enumerate(_layers(artifact.model)):
            if isinstance(mod, torch.nn.Linear):
                layers.append({"op": "linear",
                               "weight": mod.weight.detach().numpy().astype(np.float32).copy(),
                               "bias": None if mod.bias is None else
                               mod.bias.detach().numpy().astype(np.float32).copy()})
            elif isinstance(mod, torch.nn.ReLU):
                layers.append({"op": "relu"})
            elif isinstance(mod, torch.nn.Flatten) and mod.start_dim == 1 and mod.end_dim == -1:
                layers.append({"op": "flatten"})
            else:
                raise mo.FormatError(f"{self.name}: layer {i} ({type(mod).__name__}) has no "
                                     "NumPy form; only Flatten, Linear and ReLU export.")
        x = ctx.example_inputs[0]
        ref = artifact.model(x).detach().numpy()
        err = float(np.abs(run_layers(layers, x.numpy()) - ref).max())
        return artifact.evolve(step=self.step(notes=[f"max abs error vs torch {err:.3g}"]),
                               format=FORMAT, model=layers)


def _layers(model: Any) -> list[Any]:
    import torch

    if not isinstance(model, torch.nn.Sequential):
        raise mo.FormatError(f"{FORMAT}: only torch.nn.Sequential models export, got "
                             f"{type(model).__name__}.")
    return list(model)


def run_layers(layers: list[dict[str, Any]], x: Any) -> Any:
    """Run the NumPy layer list on array ``x``."""
    import numpy as np

    for layer in layers:
        if layer["op"] == "flatten":
            x = x.reshape(x.shape[0], -1)
        elif layer["op"] == "relu":
            x = np.maximum(x, 0)
        else:
            x = x @ layer["weight"].T + (0 if layer["bias"] is None else layer["bias"])
    return x


class NpzFormat(mo.Format):
    """example.npz in an artifact folder: graph.json + weights/<i>.npy (no pickles)."""

    name = FORMAT
    primary = "graph.json"

    def save(self, artifact: mo.ModelArtifact, folder: Path, **options: Any) -> list[str]:
        import numpy as np

        mo.build_config(mo.interfaces.EmptyConfig, options, f"format {FORMAT!r}")
        (folder / "weights").mkdir()
        graph, files = [], ["graph.json"]
        for i, layer in enumerate(artifact.model):
            entry = {"op": layer["op"]}
            for key in ("weight", "bias"):
                if layer.get(key) is not None:
                    rel = f"weights/{i}.{key}.npy"
                    np.save(folder / rel, layer[key], allow_pickle=False)
                    entry[key] = rel
                    files.append(rel)
            graph.append(entry)
        (folder / "graph.json").write_text(json.dumps({"layers": graph}, indent=1))
        return files

    def load(self, folder: Path, saved: mo.ModelArtifact, model: Any, plugins: Any) -> Any:
        import numpy as np

        graph = json.loads((folder / "graph.json").read_text())
        layers = []
        for entry in graph["layers"]:
            layer = {"op": entry["op"], "bias": None}
            for key in ("weight", "bias"):
                if key in entry:  # the core verified every listed file's hash already
                    layer[key] = np.load(folder / entry[key], allow_pickle=False)
            layers.append(layer)
        return layers


class NumpyRunner(mo.Runner):
    """Runs the layer list with NumPy (its BLAS threads limited to ``num_threads`` during a
    call when threadpoolctl is installed)."""

    num_threads: int | None = None

    def _run(self, inputs: Any) -> list[Any]:
        import contextlib

        import torch

        limit: Any = contextlib.nullcontext()
        if self.num_threads:
            try:
                from threadpoolctl import threadpool_limits

                limit = threadpool_limits(limits=self.num_threads)
            except ImportError:
                pass
        with limit:
            out = run_layers(self.artifact.model, inputs[0].detach().cpu().numpy())
        return [torch.from_numpy(out)]


@mo.config
class NumpyConfig:
    """Options of ``example.numpy``."""

    num_threads: int | None = mo.field(
        None, validator=mo.positive,
        help="BLAS threads of a call (threadpoolctl; default: NumPy's own)")


class NumpyBackend(mo.Backend):
    """NumPy execution of example.npz artifacts."""

    name = "example.numpy"
    accepts = (FORMAT,)
    Config = NumpyConfig
    # what serving, the search and the accuracy gate read off the class: the thread count
    # option (serving splits the cores between replicas with it), NumPy's matmuls run without
    # the GIL (replicas as threads), and this backend evaluates example.npz artifacts
    thread_option = "num_threads"
    releases_gil = True
    reference_for = (FORMAT,)

    def load(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.Runner:
        runner = NumpyRunner(artifact)
        runner.num_threads = self.config.num_threads
        return runner
