"""docs/serving-alerts.yml: every rule parses as PromQL, is complete, and names only metrics
a live server exports (a renamed metric would silently disable its alert); the health gauges
behind the rules read right."""

from __future__ import annotations

from pathlib import Path

import httpx
import promql_parser
import pytest
import torch
import yaml
from helpers import tiny_mlp
from prometheus_client.parser import text_string_to_metric_families

import modelopt_core as mo

pytest.importorskip("fastapi")
from modelopt_serve import codec  # noqa: E402
from modelopt_serve.server import serve_in_thread  # noqa: E402

RULES = Path(__file__).resolve().parents[2] / "docs" / "serving-alerts.yml"


def _rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def _selectors(expr: str) -> set[str]:
    names: set[str] = set()

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)  # raises on a syntax error
    return names


@pytest.fixture(scope="module")
def scrape(tmp_path_factory):
    """Sample names and values of a server that answered one request."""
    s = mo.Session(tiny_mlp(), (torch.randn(1, 8),), progress=False)
    s.export("onnx")
    path = s.current.save(tmp_path_factory.mktemp("alerts") / "mlp")
    with serve_in_thread(path, max_queue=64, cache_size=8) as url:
        body = codec.encode_inputs({s.current.inputs[0].name: torch.randn(1, 8)})
        r = httpx.post(f"{url}/predict", content=body, headers={"content-type": codec.TENSORS})
        assert r.status_code == 200
        text = httpx.get(f"{url}/metrics").text
    return {smp.name: smp.value for fam in text_string_to_metric_families(text)
            for smp in fam.samples}


def test_every_rule_is_complete_and_parses():
    rules = _rules()
    assert len(rules) >= 5 and len({r["alert"] for r in rules}) == len(rules)
    for r in rules:
        assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
        assert _selectors(r["expr"]), r["alert"]


def test_rules_name_only_metrics_the_server_exports(scrape):
    for r in _rules():
        missing = _selectors(r["expr"]) - set(scrape)
        assert not missing, f"{r['alert']}: {sorted(missing)} not in /metrics"


def test_health_gauges(scrape):
    assert scrape["modelopt_serve_ready"] == 1
    assert scrape["modelopt_serve_queue_capacity"] == 64
    assert scrape["modelopt_serve_replica_restarts_total"] == 0
    assert scrape['modelopt_serve_requests_total'] >= 1
