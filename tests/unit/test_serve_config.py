"""Serving's options are one typed config object (issue 25): checked when built, plain data
(what a Ray replica receives) and back."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")
from modelopt_serve.app import DEFAULTS, ServeConfig

import modelopt_core as mo


def test_serve_config_round_trips_through_plain_data():
    cfg = mo.build_config(ServeConfig, {"workers": 2, "preferred_batch_sizes": [1, 4, 8],
                                        "backend_options": {"intra_op_num_threads": 1},
                                        "timeout_s": 2.5, "mode": "thread"}, "test")
    assert cfg.preferred_batch_sizes == (1, 4, 8)  # JSON lists come back as the tuple
    data = json.loads(json.dumps(mo.config_to_data(cfg)))
    assert mo.build_config(ServeConfig, data, "test") == cfg
    assert set(DEFAULTS) == set(mo.config_fields(ServeConfig))


@pytest.mark.parametrize("bad, match", [
    ({"workers": 0}, "workers"),
    ({"mode": "fibers"}, "'mode' must be"),
    ({"read_timeout_s": 0}, "read_timeout_s=0"),
    ({"cache_size": -1}, "cache_size"),
    ({"max_body_mb": 0}, "max_body_mb"),
    ({"max_batch": 4}, "did you mean 'max_batch_size'"),
    ({"workers": 1.5}, "'workers' must be int"),
])
def test_bad_serve_options_are_typed_errors_naming_the_key(bad, match):
    with pytest.raises(mo.ConfigError, match=match):
        mo.build_config(ServeConfig, bad, "create_app")
