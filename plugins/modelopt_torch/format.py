"""Format ``torch``: how torch artifacts live in an artifact folder.

Weights go to ``weights.safetensors`` (never a pickle), the standard-layer structure to
``torch_model.json``. Loading needs the user's architecture (a fresh instance of the class the
model was made from): the lineage steps that changed the module structure are replayed on a
copy of it (:meth:`Optimizer.rebuild`, resolved in the plugin registry given to
:func:`modelopt_core.load_artifact`), replaced standard layers are rebuilt from the structure
record, then the weights are loaded with their saved shapes and dtypes. Bare ``.safetensors``
and plain tensor ``.pt`` state_dicts load too (``torch.load(weights_only=True)``: nothing from
the file runs).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import modelopt_core as mo
from modelopt_core.errors import (ArtifactError, ModeloptError, UnknownComponentError,
                                  UnsafeArtifactError)
from modelopt_core import read_json

WEIGHTS = "weights.safetensors"
RECORD = "torch_model.json"


class TorchFormat(mo.Format):
    """PyTorch modules: safetensors weights + a standard-layer structure record."""

    name = "torch"
    primary = WEIGHTS
    suffixes = (".safetensors", ".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt")

    def save(self, artifact: mo.ModelArtifact, folder: Path, **options: Any) -> list[str]:
        from safetensors.torch import save_file

        from modelopt_core import record_structure

        mo.build_config(mo.interfaces.EmptyConfig, options, "format 'torch'")
        state = {k: v.detach().contiguous().cpu() for k, v in artifact.model.state_dict().items()}
        _untie(state)
        save_file(state, str(folder / WEIGHTS))
        cls = type(artifact.model)
        (folder / RECORD).write_text(json.dumps(
            {"class": f"{cls.__module__}.{cls.__qualname__}",
             "structure": record_structure(artifact.model)}, indent=2, sort_keys=True))
        return [WEIGHTS, RECORD]

    def load(self, folder: Path, saved: mo.ModelArtifact, model: Any, plugins: Any) -> Any:
        if model is not None:  # keyword inputs / structured outputs: the saved positional view
            from modelopt_core import structured_view

            try:
                model = structured_view(model, saved.io, [s.name for s in saved.inputs])
            except (TypeError, KeyError, ValueError, AttributeError, IndexError) as e:
                raise ArtifactError(f"{folder / 'manifest.json'}: field io: not a valid "
                                    f"call/return structure ({type(e).__name__}: {e}); re-save "
                                    "the artifact.") from e
        return _load_torch_weights(folder / WEIGHTS, model, True, saved.lineage, saved.inputs,
                                   saved.metadata, plugins)

    def load_file(self, path: Path, model: Any, plugins: Any) -> Any:
        p = path
        if p.suffix == ".safetensors":
            return _load_torch_weights(p, model, None, pm=plugins)
        import pickle

        import torch

        if p.stat().st_size == 0:
            raise ArtifactError(f"{p}: the file is empty (0 bytes), not saved weights.")
        try:  # weights_only refuses any global it does not know: nothing from the file runs
            state = torch.load(p, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, ValueError) as e:
            raise UnsafeArtifactError(
                f"{p}: refused to unpickle (it is not a plain tensor state_dict; loading it would "
                f"execute code from the file). Save weights with safetensors or "
                f"ModelArtifact.save(). Detail: {_first_line(e)}") from e
        except (RuntimeError, EOFError, OSError) as e:
            raise ArtifactError(f"{p}: not a readable torch weights file (corrupt or truncated): "
                                f"{_first_line(e)}") from e
        if model is None:
            raise ArtifactError(f"{p}: a weights file needs a model skeleton: pass model=...")
        _check_state_dict(p, state)
        return _into_skeleton(model, state, p)


def _untie(state: dict[str, Any]) -> None:
    """safetensors refuses shared storage: give each tied tensor its own copy."""
    seen: set[int] = set()
    for k, v in state.items():
        ptr = v.untyped_storage().data_ptr()
        if ptr in seen:
            state[k] = v.clone()
        seen.add(ptr)



def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:200]



def _check_state_dict(p: Path, state: Any) -> None:
    """A bare weights file must hold a flat ``{name: tensor}`` dict."""
    import torch

    if not isinstance(state, dict):
        raise ArtifactError(f"{p}: holds a {type(state).__name__}, not a state_dict "
                            "(a dict of name -> tensor).")
    for k, v in state.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise ArtifactError(
                f"{p}: entry {str(k)[:60]!r} is a {type(v).__name__}, not a tensor: this is not a "
                "plain state_dict. For a training checkpoint, save its model's state_dict alone "
                "(e.g. torch.save(ckpt['state_dict'], path)) and load that.")



def _read_torch_json(folder: Path) -> dict[str, Any]:
    """The checked ``torch_model.json`` of a folder: ``{"class": str, "structure": records}``."""
    from modelopt_core import check_records

    meta = folder / "torch_model.json"
    if not meta.is_file():
        return {"class": "", "structure": {}}
    d = read_json(meta, "structure record")
    try:
        if not isinstance(d, dict):
            raise ArtifactError(f"field (top level): expected an object, got {type(d).__name__}")
        cls = d.get("class", "")
        if not isinstance(cls, str):
            raise ArtifactError(f"field class: expected a string, got {type(cls).__name__}")
        return {"class": cls, "structure": check_records(d.get("structure", {}))}
    except ArtifactError as e:
        raise ArtifactError(f"{meta}: {e}; re-save the artifact.") from None



def _load_torch_weights(fp: Path, model: Any, files: Any, lineage: tuple[mo.Step, ...] = (),
                        inputs: tuple[mo.TensorSpec, ...] = (),
                        metadata: dict[str, Any] | None = None, pm: Any = None) -> Any:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    record = _read_torch_json(fp.parent) if files is not None else {"class": "", "structure": {}}
    if model is None:
        cls = record["class"]
        raise ArtifactError(
            f"{fp.parent}: torch artifacts store weights only (safetensors; no pickled code). "
            f"Pass the architecture: load_artifact(path, model={cls or 'YourModel'}(...)).")
    try:
        state = load_file(str(fp))
    except (SafetensorError, OSError, ValueError) as e:
        raise ArtifactError(f"{fp}: not a valid safetensors file ({e}).") from e
    try:
        m = _replay(copy.deepcopy(model), lineage, inputs, metadata or {}, fp.parent, pm)
    except ArtifactError:
        raise
    except (ModeloptError, TypeError, ValueError, KeyError) as e:  # e.g. a step's config
        raise ArtifactError(f"{fp.parent}: cannot replay the saved lineage on "
                            f"{type(model).__name__} ({type(e).__name__}: {_first_line(e)}); "
                            "the manifest's lineage does not fit the installed components.") from e
    return _into_skeleton(m, state, fp, record["structure"], copied=True)



def _replay(model: Any, lineage: tuple[mo.Step, ...], inputs: tuple[mo.TensorSpec, ...],
            metadata: dict[str, Any], where: Path, pm: Any) -> Any:
    """Re-run, without data, the structural part of every lineage step that defines
    :meth:`Optimizer.rebuild` (torch.fx graphs, quantizer modules) on ``model``, in order.

    Each step's rebuild gets that step's own restore record (``Step.restore``). Steps that
    cannot be replayed here (their plugin is not installed, or a third-party optimizer
    without ``rebuild()``) are checked afterwards: when the saved weights or the saved layer
    record do not fit the result, loading fails with an :class:`ArtifactError` naming them
    instead of loading weights into the wrong modules."""
    import inspect

    from modelopt_core import CORE_DISTRIBUTION

    steps = [s for s in lineage if s.kind == "optimizer"]
    if not steps:
        return model
    example = None
    suspects: list[str] = []  # steps whose structure nothing here can re-create
    for step in steps:
        try:
            info = pm.get("optimizer", step.component)
        except UnknownComponentError:
            suspects.append(f"{step.component!r} (plugin {step.plugin or '?'!r} "
                            f"{step.version}: not installed here, so its rebuild() cannot run)")
            continue
        cls = info.cls
        if cls.rebuild is mo.Optimizer.rebuild:
            if info.distribution != CORE_DISTRIBUTION:  # built-ins round-trip (contract test)
                suspects.append(f"{step.component!r} (plugin {info.plugin!r} from "
                                f"{info.distribution}: defines no rebuild())")
            continue
        if example is None:
            example = _example_inputs(inputs, where)
        try:
            inst = cls(**step.config)
            params = inspect.signature(inst.rebuild).parameters
            if "restore" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
                new = inst.rebuild(model, example, metadata, restore=dict(step.restore))
            else:  # written before Step.restore existed
                new = inst.rebuild(model, example, metadata)
        except ModeloptError as e:
            raise ArtifactError(f"{where}: cannot rebuild lineage step {step.component!r} on "
                                f"{type(model).__name__}: {e}") from e
        except Exception as e:  # a traced architecture that does not match the saved one
            raise ArtifactError(
                f"{where}: cannot rebuild lineage step {step.component!r} on "
                f"{type(model).__name__} ({type(e).__name__}: {str(e)[:200]}); pass the "
                "architecture the artifact was made from, or load its ONNX export.") from e
        if new is not None:
            model = new
    if suspects:
        _check_replayable(model, where, suspects)
    return model



def _check_replayable(model: Any, where: Path, suspects: list[str]) -> None:
    """After :func:`_replay`: raise an :class:`ArtifactError` naming ``suspects`` when the
    saved weights (names) or the saved standard-layer record do not fit ``model``."""
    from safetensors import safe_open

    from modelopt_core import rebuild_structure, record_structure

    try:
        with safe_open(str(where / "weights.safetensors"), framework="pt") as f:
            saved_keys = set(f.keys())
        saved = json.loads((where / "torch_model.json").read_text()).get("structure", {})
        if not isinstance(saved, dict):
            return
    except Exception:  # unreadable files: the weight loader reports those itself
        return
    named = "; ".join(suspects)
    todo = ("Give that optimizer a rebuild() (see Optimizer.rebuild) or install its plugin, "
            "load the artifact's ONNX export instead, or pass the optimized module itself as "
            "the skeleton.")
    if set(model.state_dict()) != saved_keys:
        try:  # what loading does next for replaced standard layers
            rebuild_structure(model, saved)
        except Exception:
            return  # a broken record: the weight loader reports it
        own = set(model.state_dict())
        if own != saved_keys:
            raise ArtifactError(
                f"{where}: the saved weights do not fit {type(model).__name__} after replaying "
                f"the lineage (missing {sorted(own - saved_keys)[:5]}, unexpected "
                f"{sorted(saved_keys - own)[:5]}): lineage step {named} changed the module "
                f"structure in a way loading cannot re-create. {todo}")
    # a standard layer here where the saved model had none: the saved model holds a module
    # of its own there (same weight names, another forward), so loading would be wrong
    odd = [f"{p} ({r['type']})" for p, r in record_structure(model).items() if p not in saved]
    if odd:
        raise ArtifactError(
            f"{where}: the saved model has modules of its own where {type(model).__name__} has "
            f"standard layers {odd[:5]}: lineage step {named} replaced them and loading cannot "
            f"re-create them. {todo}")



def _example_inputs(inputs: tuple[mo.TensorSpec, ...], where: Path) -> tuple[Any, ...]:
    """Zero tensors shaped like the saved input specs (symbolic dims -> 2); sizes and dtypes
    are checked first, so a corrupt manifest cannot drive a huge allocation."""
    import torch

    if not inputs:
        raise ArtifactError(f"{where}: the manifest lists no inputs, which replaying its "
                            "lineage needs; re-save the artifact from a Session.")
    out = []
    for spec in inputs:
        dims = spec.shape if isinstance(spec.shape, (tuple, list)) else None
        if dims is None or not all(isinstance(d, str) or (type(d) is int and d > 0)
                                   for d in dims):
            raise ArtifactError(f"{where}: manifest.json: input {spec.name!r} has shape "
                                f"{spec.shape!r}; each dim must be a positive int or a name. "
                                "Re-save the artifact.")
        shape = [d if isinstance(d, int) else 2 for d in dims]
        numel = 1
        for d in shape:
            numel *= d
        if numel > 1 << 30:
            raise ArtifactError(f"{where}: manifest.json: input {spec.name!r} has shape "
                                f"{list(dims)} ({numel} elements), too large to replay the "
                                "lineage with; the manifest is corrupt. Re-save the artifact.")
        dtype = getattr(torch, spec.dtype, None) if isinstance(spec.dtype, str) else None
        if not isinstance(dtype, torch.dtype):
            raise ArtifactError(f"{where}: input {spec.name!r} has unknown dtype {spec.dtype!r}.")
        out.append(torch.zeros(shape, dtype=dtype))
    return tuple(out)



def _into_skeleton(model: Any, state: dict[str, Any], where: Path,
                   structure: dict[str, Any] | None = None, copied: bool = False) -> Any:
    m = model if copied else copy.deepcopy(model)
    if structure and set(m.state_dict()) != set(state):
        from modelopt_core import rebuild_structure

        shapes = {k: tuple(v.shape) for k, v in state.items()}
        try:  # layers replaced by a step (low-rank, separable, folded BN): rebuild them
            rebuild_structure(m, structure, shapes)  # layers only as large as the saved weights
        except ArtifactError as e:
            raise ArtifactError(f"{where.parent / 'torch_model.json'}: cannot rebuild the saved "
                                f"layer structure: {e}") from e
    own = m.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise ArtifactError(
            f"{where}: weights do not fit {type(model).__name__}: missing {missing[:5]}, "
            f"unexpected {extra[:5]}. Pass the architecture the artifact was saved from.")
    try:
        _resize_to(m, state)
        m.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError, IndexError, AttributeError) as e:
        raise ArtifactError(f"{where}: weights do not fit {type(model).__name__} "
                            f"({type(e).__name__}: {_first_line(e)}). Pass the architecture "
                            "the artifact was saved from.") from e
    return m.eval()  # artifacts hold inference models; call .train() to fine-tune further



def _resize_to(m: Any, state: dict[str, Any]) -> None:
    """Give parameters/buffers the saved shapes (pruned models) and dtypes (bf16/fp16 models),
    and fix layer attributes."""
    import torch

    for name, t in state.items():
        mod_name, _, attr = name.rpartition(".")
        mod = m.get_submodule(mod_name) if mod_name else m
        cur = getattr(mod, attr)
        if cur is None or (tuple(cur.shape) == tuple(t.shape) and cur.dtype == t.dtype):
            continue
        new = torch.empty_like(t)
        if isinstance(cur, torch.nn.Parameter):
            setattr(mod, attr, torch.nn.Parameter(new, requires_grad=cur.requires_grad))
        else:
            mod._buffers[attr] = new
        if attr == "weight" and isinstance(mod, torch.nn.modules.conv._ConvNd):
            if mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels \
                    and t.shape[1] == 1:  # a pruned depthwise conv keeps one group per channel
                mod.groups = t.shape[0]
            mod.out_channels, mod.in_channels = t.shape[0], t.shape[1] * mod.groups
        elif attr == "weight" and isinstance(mod, torch.nn.Linear):
            mod.out_features, mod.in_features = t.shape
        elif isinstance(mod, torch.nn.modules.batchnorm._NormBase) and t.dim() == 1:
            mod.num_features = t.shape[0]


