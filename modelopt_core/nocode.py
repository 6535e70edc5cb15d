"""The no-code entry: a model file and NumPy data instead of a Python recipe.

``modelopt optimize --model MODEL --calibration DATA [--eval EVAL]`` and ``modelopt run``
with the same options build their :class:`~modelopt_core.Session` here. ``MODEL`` is:

- ``model.onnx``: an ONNX file, the original artifact as it is (its graph's input and output
  specs; ONNX-level steps and runtimes that take ONNX apply, torch-only steps do not);
- ``model.pt2``: a ``torch.export`` program (``torch.export.save``), run as a torch module.
  torch unpickles parts of a ``.pt2`` file: load only files you trust, as you would a script;
- ``package.module:callable``: what the callable returns (an ``nn.Module``), called with
  ``--model-kwargs``; the working directory is importable;
- a saved modelopt artifact folder of a non-torch format (ONNX, OpenVINO...).

The data (:mod:`.samples`) is cut into batches of ``batch_size`` samples (default: the
model's fixed batch, whose leftover samples are dropped, else 8); the first batch is the example input, so latency is timed at
that batch. The accuracy metric, in percent (points), is top-1 accuracy against ``--eval``'s
labels, else the agreement of each model with the original's outputs on the last quarter of
the calibration batches (at least one), held back from calibration (see
:class:`~modelopt_core.gate.Agreement`: top-1 agreement for a ``[N, classes]`` output, else
cosine similarity).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from .artifact import ModelArtifact, TensorSpec, load_artifact
from .callables import import_callable
from .errors import ArtifactError, ConfigError, DataError, FormatError
from .gate import Agreement
from .samples import batch_samples, read_labels, read_samples

__all__ = [
    "DEFAULT_BATCH",
    "AgreementPercent",
    "NoCode",
    "Top1",
    "load_original",
    "nocode_session",
]

#: samples per batch when the model's batch dim is not fixed
DEFAULT_BATCH = 8


@attrs.define
class NoCode:
    """What ``--model`` names, loaded: ``model`` (an ``nn.Module`` or a
    :class:`ModelArtifact`), its input specs (None: known only from the data) and how it was
    read (``"onnx"``, ``"pt2"``, ``"callable"``, ``"artifact"``)."""

    model: Any
    specs: tuple[TensorSpec, ...] | None
    kind: str
    ref: str


def load_original(ref: str, kwargs: dict[str, Any] | None = None,
                  plugins: Any = None) -> NoCode:
    """Load what ``--model ref`` names (see the module doc)."""
    p = Path(ref)
    if kwargs and (p.suffix in (".onnx", ".pt2") or p.is_dir()):
        raise ConfigError(f"--model-kwargs go with --model package.module:callable, not with "
                          f"the file {ref!r}.")
    if p.suffix in (".onnx", ".pt2") or p.is_dir():
        if not p.exists():
            raise ConfigError(f"--model {ref}: no such file.")
        if p.suffix == ".pt2":
            return _load_pt2(p)
        art = load_artifact(p, plugins=plugins)
        if art.format == "torch":
            raise ConfigError(f"--model {ref}: a saved torch artifact holds weights only; give "
                              "its architecture as --model package.module:callable instead.")
        if not art.inputs:
            raise FormatError(f"--model {ref}: the {art.format} model declares no inputs, so "
                              "the calibration data cannot be matched to them.")
        return NoCode(art, art.inputs, "onnx" if p.suffix == ".onnx" else "artifact", ref)
    if ":" not in ref:
        raise ConfigError(f"--model {ref!r}: expected a .onnx or .pt2 file, a saved artifact "
                          "folder, or package.module:callable (a function or class returning "
                          "a torch.nn.Module).")
    import torch

    model = import_callable(ref, "--model", where="--model")(**(kwargs or {}))
    if not isinstance(model, torch.nn.Module):
        raise FormatError(f"--model {ref}: returned a {type(model).__name__}, not a "
                          "torch.nn.Module.")
    return NoCode(model.eval(), None, "callable", ref)


def _load_pt2(p: Path) -> NoCode:
    """A ``torch.export`` program: its module, and input specs from its signature."""
    import torch

    try:
        ep = torch.export.load(str(p))
    except Exception as e:
        raise ArtifactError(f"--model {p}: not a readable torch.export program "
                            f"({type(e).__name__}: {str(e)[:200]}); save one with "
                            "torch.export.save(torch.export.export(model, args), path).") from e
    names = list(ep.graph_signature.user_inputs)
    vals = {n.name: n.meta.get("val") for n in ep.graph.nodes if n.op == "placeholder"}
    specs = []
    for i, name in enumerate(names):
        v = vals.get(name)
        if not isinstance(v, torch.Tensor):
            raise FormatError(f"--model {p}: input {name!r} is not a tensor; the no-code entry "
                              "takes programs of tensor inputs.")
        shape = tuple(int(d) if isinstance(d, int) else ("batch" if j == 0 else f"{name}_dim{j}")
                      for j, d in enumerate(v.shape))
        specs.append(TensorSpec(name, shape, str(v.dtype).replace("torch.", "")))
    return NoCode(ep.module(), tuple(specs), "pt2", str(p))


class Top1:
    """``eval_fn``: top-1 accuracy (%) of the first output's argmax against labels."""

    def __init__(self, batches: list[tuple[Any, ...]], labels: Any, source: str) -> None:
        import torch

        if not batches:
            raise DataError(f"--eval {source}: {len(labels)} labelled sample(s), fewer than "
                            "one batch of the model's fixed batch size.")
        self.batches = batches
        self.labels = torch.from_numpy(labels)
        self.metric = f"top-1 accuracy (%) on {len(labels)} labelled samples ({source})"

    def __call__(self, runner: Any) -> float:
        correct, at = 0, 0
        for b in self.batches:
            out = runner.run_flat(list(b))[0]
            n = int(b[0].shape[0])
            if out.dim() != 2 or out.shape[0] != n:
                raise DataError(f"--eval: top-1 accuracy needs a [samples, classes] first "
                                f"output; the model returns {tuple(out.shape)}. Evaluate "
                                "without --eval (agreement with the original).")
            correct += int((out.argmax(1) == self.labels[at:at + n]).sum())
            at += n
        return 100.0 * correct / at


class AgreementPercent:
    """``eval_fn``: :class:`Agreement` with the original model, in percent."""

    def __init__(self, agreement: Agreement) -> None:
        self.agreement = agreement

    @property
    def metric(self) -> str:
        self.agreement.reference_outputs()  # its kind is known once the original has run
        return (f"{self.agreement.kind} with the original model (%) on "
                f"{self.agreement.rows} held-out calibration samples (no --eval labels)")

    def __call__(self, runner: Any) -> float:
        return 100.0 * self.agreement(runner)


def nocode_session(ref: str, calibration: str, eval_path: str | None = None,
                   kwargs: dict[str, Any] | None = None, batch_size: int | None = None,
                   progress: bool = False, plugins: Any = None) -> Any:
    """The :class:`~modelopt_core.Session` of ``--model ref --calibration ... [--eval ...]``
    (see the module doc); its ``eval_fn`` has a ``metric`` attribute saying what it
    measures."""
    from .session import Session

    orig = load_original(ref, kwargs, plugins)
    arrays, _ = read_samples(calibration, orig.specs)
    if orig.specs is None:
        arrays = _in_call_order(orig.model, arrays)
    size = _batch_size(orig.specs, batch_size, next(iter(arrays.values())).shape[0],
                       calibration)
    fixed = orig.specs is not None and isinstance(orig.specs[0].shape[0], int)
    batches = batch_samples(arrays, size, keep_partial=not fixed)
    evaluate = None
    if eval_path is not None and Path(eval_path).suffix != ".npy":
        got, labels = read_samples(eval_path, orig.specs or _specs_of(arrays), "--eval",
                                   labels=True)
        evaluate = Top1(batch_samples(got, size, keep_partial=not fixed), labels, eval_path)
    else:
        held = _hold_out(batches, calibration, size, eval_path is None)
        if eval_path is not None:
            labels = read_labels(eval_path, next(iter(arrays.values())).shape[0])
            start = size * (len(batches) - len(held))
            evaluate = Top1(held, labels[start:start + sum(int(b[0].shape[0]) for b in held)],
                            f"{eval_path}, the last {len(held)} calibration batch(es)")
        batches = batches[:len(batches) - len(held)]
    names = list(arrays)
    holder: dict[str, Any] = {}
    if evaluate is None:
        evaluate = AgreementPercent(Agreement(held, lambda: holder["s"].runner(
            artifact=holder["s"].original)))
    model = orig.model
    s = Session(model, batches[0], calibration_data=batches, eval_fn=evaluate,
                input_names=None if isinstance(model, ModelArtifact) else names,
                dynamic_batch=not fixed, progress=progress, plugins=plugins)
    holder["s"] = s
    return s


def _in_call_order(model: Any, arrays: dict[str, Any]) -> dict[str, Any]:
    """The arrays of a model without specs, named and ordered as its ``forward`` takes them
    when their names are its parameters' (else in the file's order); a single array saved
    without a name (``np.savez(path, x)``: ``arr_0``) is the input ``input``."""
    import inspect

    if len(arrays) == 1 and next(iter(arrays)).startswith("arr_"):
        return {"input": next(iter(arrays.values()))}
    try:
        params = list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return arrays
    if set(arrays) <= set(params):
        return {n: arrays[n] for n in params if n in arrays}
    return arrays


def _specs_of(arrays: dict[str, Any]) -> tuple[TensorSpec, ...]:
    """Input specs from the calibration arrays (a model that declares none)."""
    return tuple(TensorSpec(n, ("batch",) + tuple(a.shape[1:]), str(a.dtype))
                 for n, a in arrays.items())


def _batch_size(specs: tuple[TensorSpec, ...] | None, given: int | None, count: int,
                where: str) -> int:
    fixed = specs[0].shape[0] if specs and specs[0].shape else None
    if isinstance(fixed, int):
        if given is not None and given != fixed:
            raise ConfigError(f"--batch-size {given}: the model takes a fixed batch of {fixed}.")
        if count < fixed:
            raise DataError(f"--calibration {where}: {count} sample(s), fewer than the model's "
                            f"fixed batch of {fixed}.")
        return fixed
    if given is not None and given < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {given}.")
    return given or min(DEFAULT_BATCH, count)


def _hold_out(batches: list[tuple[Any, ...]], where: str, size: int,
              agreement: bool) -> list[tuple[Any, ...]]:
    """The last quarter of the batches (at least one), held back to evaluate on."""
    if len(batches) < 2:
        use = "agreement with the original" if agreement else "accuracy on the labels"
        raise DataError(f"--calibration {where}: {len(batches)} batch of {size} sample(s); a "
                        f"quarter of the batches (at least one) is held back to measure {use}, "
                        f"so give at least {2 * size} samples (better {8 * size})"
                        + (", or --eval eval.npz with labelled samples" if agreement else "")
                        + ".")
    return batches[len(batches) - max(1, len(batches) // 4):]
