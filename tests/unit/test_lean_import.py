"""Plugin discovery stays light: building the plugin manager, listing components, looking them
up, building their configs and asking their availability import no torch, numpy, ONNX or
scikit-learn (``modelopt plugins`` must answer in well under a second). Heavy imports happen
inside ``apply`` / ``export`` / ``load`` / ``rebuild``.

Each check runs in a fresh interpreter: the test process itself has torch loaded already.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "numpy", "onnx", "onnxruntime", "onnxscript", "onnxoptimizer", "sklearn",
         "scipy", "torch_pruning", "tensorrt", "pycuda", "safetensors")

# (kind, name, config kwargs): a few components of every built-in plugin, with options set
CONFIGS = [
    ("optimizer", "quantize.static", {"observer": "percentile", "per_channel": False}),
    ("optimizer", "quantize.dynamic", {"layers": ("linear",)}),
    ("optimizer", "quantize.qat", {"epochs": 1, "learnable_scales": True}),
    ("optimizer", "quantize.auto", {"max_accuracy_drop": 0.5}),
    ("optimizer", "prune.structured", {"ratio": 0.3}),
    ("optimizer", "compress.weight_sharing", {"n_clusters": 8}),
    ("optimizer", "compress.low_rank", {"rank": 4}),
    ("optimizer", "arch.depthwise_separable", {"block": "inverted_residual"}),
    ("optimizer", "distill.features", {"epochs": 1}),
    ("optimizer", "distill.logits", {"temperature": 3.0}),
    ("optimizer", "onnx.quantize_static", {"per_channel": True}),
    ("exporter", "onnx", {}),
    ("backend", "onnxruntime", {}),
    ("backend", "torch", {}),
    ("backend", "tensorrt", {}),
    ("profiler", "latency", {}),
]

_SCRIPT = """
import contextlib, io, json, sys
import modelopt_core as mo
from modelopt_core import cli

heavy = {heavy!r}
pm = mo.get_plugin_manager()
summary = pm.summary()
built = []
for kind, name, kwargs in {configs!r}:
    info = pm.get(kind, name)
    cls = info.cls
    assert isinstance(cls, type) and cls.name == name, (cls, name)
    cfg = cls.Config(**kwargs)
    built.append([name, type(cfg).__name__, cls.availability()[0],
                  list(getattr(cls, "accepts", ())), list(getattr(cls, "needs", ()))])
for info in pm.components():
    info.cls.availability()
    info.cls.describe()
out = io.StringIO()
with contextlib.redirect_stdout(out):
    rc = cli.main(["plugins", "--json"])
print(json.dumps({{"loaded": [m for m in heavy if m in sys.modules],
                  "failed": summary["failed"], "built": built, "rc": rc,
                  "cli_json": json.loads(out.getvalue()) is not None}}))
"""


def _run(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_plugin_discovery_and_configs_import_no_heavy_library():
    res = _run(_SCRIPT.format(heavy=HEAVY, configs=CONFIGS))
    assert res["failed"] == [], f"built-in plugins failed to load: {res['failed']}"
    assert res["rc"] in (0, None) and res["cli_json"]
    assert [b[0] for b in res["built"]] == [c[1] for c in CONFIGS]
    assert res["loaded"] == [], (
        f"plugin discovery / summary / Config construction imported {res['loaded']}; import "
        "them inside apply()/export()/load()/rebuild() instead")


def test_every_builtin_plugin_module_imports_light():
    """Each built-in entry point on its own (a failure names the plugin that is heavy)."""
    code = ("import importlib.metadata as md, json, sys\n"
            f"heavy = {HEAVY!r}\n"
            "res = {}\n"
            "for ep in md.entry_points(group='modelopt_core'):\n"
            "    if ep.dist is not None and ep.dist.name == 'modelopt-core':\n"
            "        ep.load()\n"
            "        res[ep.name] = [m for m in heavy if m in sys.modules]\n"
            "print(json.dumps(res))\n")
    res = _run(code)
    assert {"torch", "onnx", "quant", "prune", "distill"} <= set(res)
    assert all(v == [] for v in res.values()), res


def test_lazily_exported_layers_still_import_from_their_old_modules():
    """The ``nn.Module`` classes moved into implementation modules resolve from where they
    were defined before (and are the very same classes)."""
    from modelopt_distill import FeatureAdapter, make_adapter
    from modelopt_distill.adapters import FeatureAdapter as FA
    from modelopt_prune.depthwise import InvertedResidual
    from modelopt_prune.layers import SharedConv as SC
    from modelopt_prune.weight_sharing import SharedConv, SharedLinear
    from modelopt_quant.dynamic import DynLinear, DynRNN
    from modelopt_quant.dynamic_layers import DynLinear as DL
    from torch import nn

    assert FeatureAdapter is FA and SharedConv is SC and DynLinear is DL
    for cls in (FeatureAdapter, InvertedResidual, SharedConv, SharedLinear, DynLinear, DynRNN):
        assert issubclass(cls, nn.Module)
    assert callable(make_adapter)
    import modelopt_quant.dynamic as dyn

    try:
        dyn.NoSuchName  # noqa: B018
    except AttributeError as e:
        assert "NoSuchName" in str(e)
    else:  # pragma: no cover
        raise AssertionError("unknown attribute did not raise")


def test_tensorrt_availability_does_not_import_torch(tmp_path):
    """With ``tensorrt`` installed, listing plugins asks the driver (NVML), not torch."""
    fake = tmp_path / "tensorrt"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('a stand-in: never imported')\n")
    code = ("import json, sys\n"
            f"sys.path.insert(0, {str(tmp_path)!r})\n"
            "import modelopt_core as mo\n"
            "pm = mo.get_plugin_manager()\n"
            "ok, why = pm.get('backend', 'tensorrt').cls.availability()\n"
            "print(json.dumps([ok, why, [m for m in ('torch', 'tensorrt') "
            "if m in sys.modules]]))\n")
    ok, why, loaded = _run(code)
    assert loaded == []
    assert ok or "GPU" in why


def test_the_contract_checks_are_shipped_but_not_imported_by_the_core():
    """``modelopt_core.testing`` (public) is not imported by ``import modelopt_core``, and
    importing it imports nothing heavy: torch comes when a check runs."""
    code = ("import json, sys\n"
            "import modelopt_core\n"
            "before = 'modelopt_core.testing' in sys.modules\n"
            "import modelopt_core.testing as mt\n"
            f"heavy = {HEAVY!r}\n"
            "print(json.dumps([before, [m for m in heavy if m in sys.modules],\n"
            "                  callable(mt.check_plugin)]))\n")
    before, loaded, ok = _run(code)
    assert before is False and loaded == [] and ok
