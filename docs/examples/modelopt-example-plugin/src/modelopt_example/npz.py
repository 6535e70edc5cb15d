"""A deployment format the core has never heard of: ``example.npz``.

A model whose forward is one chain of ``Conv2d`` / ``BatchNorm`` / ``MaxPool2d`` /
``Flatten`` / ``Linear`` / ``ReLU`` modules (as torch.fx traces it: an ``nn.Sequential``, or
a CNN such as the digits ``SmallCNN``) becomes plain NumPy: a ``graph.json`` listing the
layers and one ``weights/<i>.<name>.npy`` file per tensor (a multi-file format, as
OpenVINO's ``.xml`` + ``.bin`` or a Core ML package are). Three components make it a complete
target: the exporter ``example.npz`` (torch -> example.npz), the Format ``example.npz`` (how
it lives in an artifact folder: the core adds the manifest, the hashes and the crash-safe
swap) and the backend ``example.numpy`` (runs it with NumPy matmuls, torch in, torch out).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import modelopt_core as mo

FORMAT = "example.npz"


class NpzExporter(mo.Exporter):
    """torch -> example.npz, for a chain of Conv2d / BatchNorm / MaxPool2d / Flatten / Linear /
    ReLU modules."""

    name = FORMAT
    source = "torch"
    target = FORMAT

    def export(self, artifact: mo.ModelArtifact, ctx: mo.Context) -> mo.ModelArtifact:
        import numpy as np

        layers = [_layer(i, mod) for i, mod in enumerate(_layers(artifact.model))]
        x = ctx.example_inputs[0]
        ref = artifact.model(x).detach().numpy()
        err = float(np.abs(run_layers(layers, x.numpy()) - ref).max())
        return artifact.evolve(step=self.step(notes=[f"max abs error vs torch {err:.3g}"]),
                               format=FORMAT, model=layers)


def _array(t: Any) -> Any:
    import numpy as np

    return None if t is None else t.detach().numpy().astype(np.float32).copy()


def _pair(v: Any) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(a) for a in v]


def _layer(i: int, mod: Any) -> dict[str, Any]:
    """Module ``mod`` (layer ``i`` of the chain) as a NumPy layer; FormatError when it has no
    NumPy form here."""
    import torch

    nn = torch.nn
    if isinstance(mod, nn.Linear):
        return {"op": "linear", "weight": _array(mod.weight), "bias": _array(mod.bias)}
    if isinstance(mod, nn.ReLU):
        return {"op": "relu"}
    if isinstance(mod, nn.Flatten) and mod.start_dim == 1 and mod.end_dim == -1:
        return {"op": "flatten"}
    if isinstance(mod, nn.Conv2d) and mod.groups == 1 and _pair(mod.dilation) == [1, 1] \
            and mod.padding_mode == "zeros" and not isinstance(mod.padding, str):
        return {"op": "conv2d", "weight": _array(mod.weight), "bias": _array(mod.bias),
                "stride": _pair(mod.stride), "padding": _pair(mod.padding)}
    if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)) and mod.running_var is not None:
        scale = (1.0 / torch.sqrt(mod.running_var + mod.eps)).detach()
        if mod.weight is not None:
            scale = scale * mod.weight.detach()
        shift = -mod.running_mean.detach() * scale
        if mod.bias is not None:
            shift = shift + mod.bias.detach()
        return {"op": "batchnorm", "scale": _array(scale), "shift": _array(shift)}
    if isinstance(mod, nn.MaxPool2d) and _pair(mod.dilation) == [1, 1] and not mod.ceil_mode \
            and not mod.return_indices:
        return {"op": "maxpool2d", "kernel": _pair(mod.kernel_size),
                "stride": _pair(mod.stride or mod.kernel_size), "padding": _pair(mod.padding)}
    raise mo.FormatError(f"{FORMAT}: layer {i} ({type(mod).__name__}) has no NumPy form; only "
                         "Conv2d (groups 1, no dilation), BatchNorm, MaxPool2d, Flatten, "
                         "Linear and ReLU export.")


def _layers(model: Any) -> list[Any]:
    """The model's modules in call order, when torch.fx traces its forward as one chain of
    module calls (input -> module -> module ... -> output); FormatError otherwise."""
    import torch.fx

    what = type(model).__name__
    try:
        graph = torch.fx.symbolic_trace(model)
    except Exception as e:  # control flow on values, calls fx cannot trace...
        raise mo.FormatError(f"{FORMAT}: cannot trace {what} with torch.fx ({e}).") from e
    modules = dict(graph.named_modules())
    out: list[Any] = []
    prev = None
    for node in graph.graph.nodes:
        if node.op == "placeholder" and prev is None:
            prev = node
        elif node.op == "output" and node.args == (prev,) and out:
            return out
        elif node.op == "call_module" and node.args == (prev,) and not node.kwargs:
            out.append(modules[node.target])
            prev = node
        else:
            break
    raise mo.FormatError(f"{FORMAT}: only a model whose forward is one chain of modules "
                         f"exports; {what} has {node.format_node()!r}.")


def run_layers(layers: list[dict[str, Any]], x: Any) -> Any:
    """Run the NumPy layer list on array ``x``."""
    import numpy as np

    for layer in layers:
        op = layer["op"]
        if op == "flatten":
            x = x.reshape(x.shape[0], -1)
        elif op == "relu":
            x = np.maximum(x, 0)
        elif op == "conv2d":
            x = _conv2d(x, layer)
        elif op == "batchnorm":
            shape = (1, -1) + (1,) * (x.ndim - 2)
            x = x * layer["scale"].reshape(shape) + layer["shift"].reshape(shape)
        elif op == "maxpool2d":
            x = _maxpool2d(x, layer)
        else:
            x = x @ layer["weight"].T + (0 if layer["bias"] is None else layer["bias"])
    return x


def layer_macs(layers: list[dict[str, Any]], x: Any) -> int:
    """Multiply-accumulates of one pass of the layer list on array ``x`` (the products of
    ``linear`` and ``conv2d`` layers; the others are elementwise or cheap)."""
    macs = 0
    for layer in layers:
        y = run_layers([layer], x)
        if layer["op"] == "linear":
            macs += y.size * layer["weight"].shape[1]
        elif layer["op"] == "conv2d":
            w = layer["weight"]
            macs += y.size * w.shape[1] * w.shape[2] * w.shape[3]
        x = y
    return int(macs)


def _conv2d(x: Any, layer: dict[str, Any]) -> Any:
    """NCHW convolution as one matrix product (im2col over a sliding-window view)."""
    import numpy as np
    from numpy.lib.stride_tricks import sliding_window_view

    w = layer["weight"]
    o, c, kh, kw = w.shape
    (sh, sw), (ph, pw) = layer["stride"], layer["padding"]
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    win = sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]  # n c oh ow kh kw
    n, _, oh, ow = win.shape[:4]
    y = win.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * kh * kw) @ w.reshape(o, -1).T
    if layer.get("bias") is not None:
        y += layer["bias"]
    return np.ascontiguousarray(y.reshape(n, oh, ow, o).transpose(0, 3, 1, 2))


def _maxpool2d(x: Any, layer: dict[str, Any]) -> Any:
    import numpy as np
    from numpy.lib.stride_tricks import sliding_window_view

    (ph, pw), (sh, sw) = layer["padding"], layer["stride"]
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
    win = sliding_window_view(x, tuple(layer["kernel"]), axis=(2, 3))[:, :, ::sh, ::sw]
    return win.max(axis=(-2, -1))


#: the layer keys that hold tensors (one .npy file each); the rest are JSON in graph.json
ARRAYS = ("weight", "bias", "scale", "shift")


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
            entry = {k: v for k, v in layer.items() if k not in ARRAYS}
            for key in ARRAYS:
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
            layer = {**entry, "bias": None}
            for key in ARRAYS:
                if key in entry:  # the core verified every listed file's hash already
                    layer[key] = np.load(folder / entry[key], allow_pickle=False)
            layers.append(layer)
        return layers


@functools.lru_cache(maxsize=1)
def _blas_pools() -> Any:
    """threadpoolctl's controller of the loaded BLAS libraries, or None without threadpoolctl.
    Looked up once: a lookup (``threadpool_limits``) costs about half a millisecond, more than
    a small model's whole call."""
    try:
        import numpy  # noqa: F401 (its BLAS is loaded before the lookup)
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


class NumpyRunner(mo.Runner):
    """Runs the layer list with NumPy (its BLAS threads limited to ``num_threads`` during a
    call when threadpoolctl is installed)."""

    num_threads: int | None = None

    def _run(self, inputs: Any) -> list[Any]:
        import contextlib

        import torch

        limit: Any = contextlib.nullcontext()
        pools = _blas_pools() if self.num_threads else None
        if pools is not None:
            limit = pools.limit(limits=self.num_threads)
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
