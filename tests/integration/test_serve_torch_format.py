"""Serving a torch-format artifact: its folder holds weights and lineage, not code, so the
architecture is named (``model=`` / ``--model module:callable``). A pruned artifact checks that
the lineage is replayed onto it, in this process and in worker processes."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("fastapi")
from modelopt_serve import ReplicaPool, ServeError, codec
from modelopt_serve.app import create_app

import modelopt_core as mo
from modelopt_demo.models import SmallCNN

SPEC = "modelopt_demo.models:SmallCNN"


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    torch.manual_seed(0)
    s = mo.Session(SmallCNN(width=16).eval(), example_inputs=(torch.randn(1, 1, 8, 8),),
                   progress=False)
    s.apply("prune.structured", ratio=0.5, round_to=4)
    path = tmp_path_factory.mktemp("torchfmt") / "pruned"
    s.current.save(path)
    return path, s.current


def test_http_serves_a_pruned_torch_artifact_named_by_module_and_callable(pruned):
    from fastapi.testclient import TestClient

    path, art = pruned
    x = torch.randn(3, 1, 8, 8)
    app = create_app(path, backend="torch", model=SPEC, model_kwargs={"width": 16},
                     load_in_background=False, max_delay_ms=1)
    with TestClient(app) as c:
        assert c.get("/ready").status_code == 200
        name = art.inputs[0].name
        r = c.post("/predict", content=codec.encode_inputs({name: x}),
                   headers={"content-type": codec.TENSORS, "accept": codec.TENSORS})
        assert r.status_code == 200, r.text
        got = codec.decode_outputs(r.content, codec.TENSORS)
    with torch.no_grad():
        want = art.model(x)
    torch.testing.assert_close(next(iter(got.values())), want, rtol=1e-4, atol=1e-5)


def test_process_replicas_rebuild_the_architecture(pruned):
    path, art = pruned
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        want = art.model(x)
    with ReplicaPool(path, "torch", workers=2, mode="process", cores=2,
                     model=SmallCNN(width=16)) as pool:
        torch.testing.assert_close(pool.run([x])[0], want, rtol=1e-4, atol=1e-5)


def test_without_the_architecture_the_errors_say_what_to_pass(pruned):
    path, art = pruned
    with pytest.raises(mo.ArtifactError,
                       match=r"--model modelopt_demo\.models:SmallCNN \[--model-kwargs JSON\]"):
        create_app(path, backend="torch")
    with pytest.raises(ServeError, match="pass model="):
        ReplicaPool(art, "torch", mode="process")
    with pytest.raises(mo.ConfigError, match="serve: cannot import model"):
        create_app(path, backend="torch", model="modelopt_demo.models:NoSuchNet")
    with pytest.raises(mo.ModeloptError, match="model_kwargs go with"):
        create_app(path, backend="torch", model=SmallCNN(width=16), model_kwargs={"width": 16})


def test_cli_model_options_are_checked(pruned, capsys):
    from modelopt_core.cli import main

    path, _ = pruned
    assert main(["serve", str(path), "--backend", "torch", "--model-kwargs", "{}"]) != 0
    assert "--model-kwargs goes with --model" in capsys.readouterr().err
    assert main(["serve", str(path), "--backend", "torch", "--model", SPEC,
                 "--model-kwargs", "[1]"]) != 0
    assert "expected a JSON object" in capsys.readouterr().err
    assert main(["serve", str(path), "--backend", "torch"]) != 0
    assert f"--model {SPEC} [--model-kwargs JSON]" in capsys.readouterr().err
