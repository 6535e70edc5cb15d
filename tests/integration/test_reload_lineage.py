"""Reloading lineages into the user's class (issue 10, item 11).

- a ``quantize.dynamic`` artifact (INT8 Linear and LSTM layers) reloads bit-exactly;
- each lineage Step carries its own restore record, so two ``compress.weight_sharing`` steps
  (or weight sharing then dynamic INT8, whose metadata keys would clash) reload;
- rebuild() written before restore records existed (three parameters) is still called;
- a third-party step that puts its own modules in the model and has no rebuild() fails at
  load with an ArtifactError naming that step, both when its weight names differ and when
  they look the same (which used to load silently into the wrong modules), and when its
  plugin is not installed at load time;
- a corrupt manifest cannot make replay allocate huge example inputs.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import modelopt_core as mo
from modelopt_core import plugins as plugins_mod
from modelopt_demo.models import SmallCNN

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_core_plugins import FakeEntryPoint, plugin_module


class Tagger(nn.Module):
    """A small sequence model: Linear -> LSTM -> Linear (dynamic INT8 targets all three)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(16, 32)
        self.rnn = nn.LSTM(32, 32, batch_first=True)
        self.head = nn.Linear(32, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(torch.relu(self.embed(x)))[0])


def _same_outputs(s: mo.Session, a: mo.ModelArtifact, b: mo.ModelArtifact, x) -> None:
    with s.runner("torch", a) as ra, s.runner("torch", b) as rb:
        ya, yb = ra(x), rb(x)
    assert torch.equal(ya, yb), f"max abs diff {float((ya - yb).abs().max()):.3g}"
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_dynamic_int8_artifact_reloads_into_the_users_class(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    s = mo.Session(Tagger().eval(), (x,), progress=False)
    art = s.apply("quantize.dynamic", keep_if_slower=False)
    assert set(art.lineage[-1].restore["quantized_layers"]) == {"embed", "rnn", "head"}
    art.save(tmp_path / "dyn")
    back = mo.load_artifact(tmp_path / "dyn", model=Tagger())
    assert type(back.model.rnn).__name__ == "DynRNN"
    assert type(back.model.head).__name__ == "DynLinear"
    _same_outputs(s, art, back, x)
    same = mo.load_artifact(tmp_path / "dyn", model=art.model)  # the INT8 model as skeleton
    _same_outputs(s, art, same, x)


def test_two_weight_sharing_steps_reload_each_with_its_own_record(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(3, 1, 8, 8)
    s = mo.Session(SmallCNN(width=8).eval(), (x,), progress=False)
    first = s.apply("compress.weight_sharing", layer_types=("conv",), n_clusters=8)
    art = s.apply("compress.weight_sharing", layer_types=("linear",), n_clusters=4)
    conv_rec = first.lineage[-1].restore["shared_layers"]
    lin_rec = art.lineage[-1].restore["shared_layers"]
    assert set(conv_rec) == {"features.0.0", "features.1.0", "features.3.0", "features.4.0"}
    assert set(lin_rec) == {"classifier.1", "classifier.3"}
    assert set(art.metadata["shared_layers"]) == set(lin_rec)  # the metadata keeps the last
    art.save(tmp_path / "ws2")
    manifest = json.loads((tmp_path / "ws2" / "manifest.json").read_text())
    records = [st["restore"] for st in manifest["lineage"] if st["component"] ==
               "compress.weight_sharing"]
    assert [set(r["shared_layers"]) for r in records] == [set(conv_rec), set(lin_rec)]
    back = mo.load_artifact(tmp_path / "ws2", model=SmallCNN(width=8))
    clusters = {n: m.n_clusters for n, m in back.model.named_modules() if hasattr(m, "codebook")}
    assert clusters == {**{n: 8 for n in conv_rec}, **{n: 4 for n in lin_rec}}
    _same_outputs(s, art, back, x)


def test_weight_sharing_then_dynamic_int8_reload(tmp_path):
    """Both steps write ``metadata["quantized_layers"]``-style keys; per-step records keep
    them apart."""
    torch.manual_seed(0)
    x = torch.randn(3, 1, 8, 8)
    s = mo.Session(SmallCNN(width=8).eval(), (x,), progress=False)
    s.apply("compress.weight_sharing", layer_types=("conv",), n_clusters=8)
    art = s.apply("quantize.dynamic", keep_if_slower=False)
    art.save(tmp_path / "mix")
    back = mo.load_artifact(tmp_path / "mix", model=SmallCNN(width=8))
    assert type(back.model.classifier[1]).__name__ == "DynLinear"
    assert type(back.model.features[0][0]).__name__ == "SharedConv"
    _same_outputs(s, art, back, x)


def test_noop_weight_sharing_step_reloads(tmp_path):
    x = torch.randn(2, 4)
    s = mo.Session(nn.Sequential(nn.Linear(4, 3)).eval(), (x,), progress=False)
    art = s.apply("compress.weight_sharing")  # 12 weights < min_weights: a no-op step
    assert art.lineage[-1].restore == {"shared_layers": {}}
    art.save(tmp_path / "noop")
    back = mo.load_artifact(tmp_path / "noop", model=nn.Sequential(nn.Linear(4, 3)))
    _same_outputs(s, art, back, x)


# ---- third-party steps: own restore records, old rebuild signature, no rebuild ---------

class Scaled(nn.Module):
    """Twice a Linear; ``new_names`` stores the weights as ``w``/``b`` instead of the Linear's
    ``weight``/``bias``."""

    def __init__(self, lin: nn.Linear, new_names: bool, factor: float = 2.0) -> None:
        super().__init__()
        self.new_names, self.factor = new_names, factor
        w, b = nn.Parameter(lin.weight.detach().clone()), nn.Parameter(lin.bias.detach().clone())
        if new_names:
            self.w, self.b = w, b
        else:
            self.weight, self.bias = w, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = (self.w, self.b) if self.new_names else (self.weight, self.bias)
        return self.factor * nn.functional.linear(x, w, b)


@mo.config
class ScaleConfig:
    factor: float = mo.field(2.0, help="output factor")


def scaler(name: str, new_names: bool, rebuild: str | None) -> type:
    """An optimizer wrapping layer 0 in :class:`Scaled`; ``rebuild``: None (no rebuild),
    "old" (three-parameter rebuild reading metadata) or "new" (reads its restore record)."""

    class Scale(mo.Optimizer):
        """Scale layer 0's output."""

        Config = ScaleConfig

        def apply(self, artifact, ctx):
            m = copy.deepcopy(artifact.model)
            m[0] = Scaled(m[0], new_names, self.config.factor)
            step = self.step(restore={"layer": "0", "factor": self.config.factor})
            return artifact.evolve(step=step, model=m, metadata={"scaled": "0"})

    Scale.name = name
    if rebuild == "old":
        def old(self, model, example_inputs, metadata):
            model[int(metadata["scaled"])] = Scaled(model[0], new_names, self.config.factor)
            return model
        Scale.rebuild = old
    elif rebuild == "new":
        def new(self, model, example_inputs, metadata, restore=None):
            seen.append(dict(restore))
            model[int(restore["layer"])] = Scaled(model[0], new_names, restore["factor"])
            return model
        Scale.rebuild = new
    return Scale


seen: list[dict] = []


@pytest.fixture
def custom_pm(monkeypatch):
    """The built-ins plus a fake third-party plugin, installed as the process-wide manager."""
    pm = mo.PluginManager()
    mod = plugin_module("scalers", register_optimizers=[
        scaler("custom.scale_new_names", True, None),
        scaler("custom.scale_same_names", False, None),
        scaler("custom.scale_old_rebuild", True, "old"),
        scaler("custom.scale_new_rebuild", True, "new")])
    pm.load_entry_points([FakeEntryPoint("scalers", mod, dist="scalers-dist")])
    monkeypatch.setattr(plugins_mod, "_default", pm)
    return pm


def net() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def _apply_save(pm, name: str, where: Path, **kw) -> tuple[mo.Session, mo.ModelArtifact]:
    s = mo.Session(net().eval(), (torch.randn(2, 4),), plugins=pm, progress=False)
    art = s.apply(name, **kw)
    art.save(where)
    return s, art


@pytest.mark.parametrize("name", ["custom.scale_new_names", "custom.scale_same_names"])
def test_own_modules_without_rebuild_fail_naming_the_step(custom_pm, tmp_path, name):
    s, art = _apply_save(custom_pm, name, tmp_path / "a")
    with pytest.raises(mo.ArtifactError, match=rf"step '{name}'.*scalers-dist.*no rebuild\(\)"):
        mo.load_artifact(tmp_path / "a", model=net())
    same = mo.load_artifact(tmp_path / "a", model=art.model)  # its own module as skeleton
    _same_outputs(s, art, same, torch.randn(2, 4))


def test_step_of_a_plugin_not_installed_at_load_names_it(custom_pm, tmp_path, monkeypatch):
    _apply_save(custom_pm, "custom.scale_new_names", tmp_path / "a")
    monkeypatch.setattr(plugins_mod, "_default", mo.PluginManager())  # built-ins only
    with pytest.raises(mo.ArtifactError, match=r"'custom.scale_new_names'.*not installed"):
        mo.load_artifact(tmp_path / "a", model=net())


def test_old_three_parameter_rebuild_is_still_called(custom_pm, tmp_path):
    s, art = _apply_save(custom_pm, "custom.scale_old_rebuild", tmp_path / "a", factor=3.0)
    back = mo.load_artifact(tmp_path / "a", model=net())
    assert isinstance(back.model[0], Scaled) and back.model[0].factor == 3.0
    _same_outputs(s, art, back, torch.randn(2, 4))


def test_rebuild_gets_its_own_steps_restore_record(custom_pm, tmp_path):
    s = mo.Session(net().eval(), (torch.randn(2, 4),), plugins=custom_pm, progress=False)
    s.apply("custom.scale_new_rebuild", factor=3.0)
    art = s.apply("prune.unstructured", amount=0.3)
    art.save(tmp_path / "a")
    seen.clear()
    back = mo.load_artifact(tmp_path / "a", model=net())
    assert seen == [{"layer": "0", "factor": 3.0}]
    _same_outputs(s, art, back, torch.randn(2, 4))


def test_restore_record_must_be_plain_data():
    opt = scaler("custom.x", True, None)()
    with pytest.raises(TypeError, match="custom.x.*plain JSON"):
        opt.step(restore={"t": torch.zeros(1)})


def test_corrupt_input_shape_cannot_drive_replay_allocation(tmp_path):
    x = torch.randn(2, 1, 8, 8)
    s = mo.Session(SmallCNN(width=8).eval(), (x,), progress=False)
    s.apply("quantize.bf16").save(tmp_path / "a")  # bf16 replays: it needs example inputs
    mpath = tmp_path / "a" / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["inputs"][0]["shape"] = [10 ** 6, 10 ** 6, 10 ** 6, 8]
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(mo.ArtifactError, match="input"):
        mo.load_artifact(tmp_path / "a", model=SmallCNN(width=8))


def test_replay_example_inputs_refuse_bad_specs():
    """The replay's own guard (independent of manifest validation): no huge or odd shapes."""
    from modelopt_torch.format import _example_inputs

    where = Path("art")
    with pytest.raises(mo.ArtifactError, match="'x'.*too large"):
        _example_inputs((mo.TensorSpec("x", (10 ** 6, 10 ** 6, 10 ** 6)),), where)
    for shape in ((-1, 3), (2.5, 3), (True, 3)):
        with pytest.raises(mo.ArtifactError, match="'x'.*positive int"):
            _example_inputs((mo.TensorSpec("x", shape),), where)
    with pytest.raises(mo.ArtifactError, match="unknown dtype"):
        _example_inputs((mo.TensorSpec("x", (2,), dtype="nope"),), where)
    [t] = _example_inputs((mo.TensorSpec("x", ("batch", 3), dtype="int64"),), where)
    assert t.shape == (2, 3) and t.dtype == torch.int64 and not t.any()
