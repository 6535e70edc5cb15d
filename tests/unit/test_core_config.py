"""Component configs: typed, validated, keyword-only, frozen, and round-trip through JSON."""

from __future__ import annotations

import json
from typing import Literal

import attrs
import pytest

import modelopt_core as mo


@mo.config
class Cfg:
    """A config using every supported annotation."""

    ratio: float = mo.field(0.5, validator=mo.in_range(0, 1, hi_open=True), help="fraction")
    steps: int = mo.field(10, validator=mo.positive, help="count")
    mode: Literal["a", "b"] = mo.field("a", help="choice")
    flag: bool = mo.field(False, help="switch")
    name: str | None = mo.field(None, help="optional text")
    sizes: tuple[int, ...] = mo.field((1, 2), help="ints")
    pair: tuple[str, float] = mo.field(("x", 1.0), help="fixed pair")
    table: dict[str, int] | None = mo.field(None, help="mapping")


def build(**kw):
    return mo.build_config(Cfg, kw, "optimizer 'test.cfg'")


def test_defaults_and_valid_values():
    c = build(ratio=0, steps=3, mode="b", flag=True, name="n", sizes=[4, 5], table={"a": 1})
    assert (c.ratio, c.steps, c.mode, c.flag, c.sizes) == (0, 3, "b", True, (4, 5))
    assert isinstance(c.sizes, tuple)  # JSON lists come back as the annotated tuple
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        c.ratio = 0.1  # type: ignore[misc]


def test_unknown_key_lists_valid_ones():
    with pytest.raises(mo.ConfigError) as ei:
        build(raito=0.3)
    msg = str(ei.value)
    assert "'test.cfg'" in msg and "'raito'" in msg and "did you mean 'ratio'" in msg
    for key in ("flag", "mode", "name", "pair", "ratio", "sizes", "steps", "table"):
        assert key in msg.split("Valid keys:")[1]


@pytest.mark.parametrize("key, value, expect", [
    ("steps", 2.5, "'steps' must be int"),
    ("steps", True, "'steps' must be int"),
    ("ratio", "0.3", "'ratio' must be float"),
    ("ratio", float("nan"), "NaN"),
    ("mode", "c", "'mode' must be Literal"),
    ("flag", 1, "'flag' must be bool"),
    ("sizes", [1, "2"], "'sizes' must be tuple"),
    ("pair", ["x"], "'pair' must be tuple"),
    ("table", {"a": "b"}, "'table' must be"),
    ("ratio", 1.0, r"outside \[0, 1\)"),
    ("steps", 0, "must be > 0"),
])
def test_ill_typed_or_out_of_range(key, value, expect):
    with pytest.raises(mo.ConfigError, match=expect) as ei:
        build(**{key: value})
    assert "test.cfg" in str(ei.value)


def test_round_trip_through_json():
    c = build(ratio=0.25, sizes=(7,), pair=("y", 2.0), table={"k": 3}, name="z")
    data = json.loads(json.dumps(mo.config_to_data(c)))
    assert data["sizes"] == [7] and data["pair"] == ["y", 2.0]
    assert mo.build_config(Cfg, data, "x") == c


def test_component_accepts_config_or_kwargs_not_both():
    class Opt(mo.Optimizer):
        """Test optimizer."""
        name = "test.cfg"
        Config = Cfg

    assert Opt(steps=4).config.steps == 4
    assert Opt(config=build(steps=5)).config.steps == 5
    with pytest.raises(TypeError):
        Opt(config=build(), steps=4)
    with pytest.raises(mo.ConfigError, match="optimizer 'test.cfg'.*'stepz'"):
        Opt(stepz=1)
    step = Opt(sizes=(3,)).step(notes=["n"])
    assert step.config["sizes"] == [3] and step.notes == ("n",) and step.kind == "optimizer"


def test_empty_config_rejects_everything():
    class NoOpt(mo.Optimizer):
        """No options."""
        name = "test.none"

    with pytest.raises(mo.ConfigError, match=r"Valid keys: \(none\)"):
        NoOpt(anything=1)


@mo.config
class Renamed:
    """A config whose field was renamed (old name kept as a deprecated alias)."""

    calibration_batches: int = mo.field(8, validator=mo.positive, aliases=("subset_size",))


def test_a_deprecated_alias_still_works_with_a_warning_naming_the_new_field():
    with pytest.warns(FutureWarning, match="'subset_size' is deprecated; use "
                                           "'calibration_batches'") as rec:
        c = mo.build_config(Renamed, {"subset_size": 5}, "optimizer 'x'")
    assert c.calibration_batches == 5 and "optimizer 'x'" in str(rec[0].message)
    assert mo.config_to_data(c) == {"calibration_batches": 5}  # saved under the new name
    with pytest.raises(mo.ConfigError, match="'subset_size' and 'calibration_batches' are the "
                                             "same option"):
        mo.build_config(Renamed, {"subset_size": 5, "calibration_batches": 6}, "x")
    with pytest.warns(FutureWarning), pytest.raises(mo.ConfigError, match="must be > 0"):
        mo.build_config(Renamed, {"subset_size": 0}, "x")  # the field's validator still runs
    with pytest.raises(mo.ConfigError, match="alias 'b' is already the name of a field"):
        @mo.config
        class Clash:
            a: int = mo.field(1, aliases=("b",))
            b: int = mo.field(2)
    with pytest.raises(mo.ConfigError, match="tuple of names"):
        mo.field(1, aliases="old")


def test_every_quantizer_names_its_calibration_count_calibration_batches():
    from modelopt_core.config import config_fields

    pm = mo.get_plugin_manager()
    fields = {(info.kind, info.name): config_fields(info.cls.Config)
              for info in pm.components() if getattr(info.cls, "Config", None) is not None}
    for name in ("onnx.quantize_static", "openvino.quantize", "quantize.static", "quantize.qat",
                 "quantize.auto"):
        assert "calibration_batches" in fields["optimizer", name], name
    for key in (("exporter", "tflite"), ("exporter", "tensorrt"), ("backend", "tensorrt")):
        assert "calibration_batches" in fields[key], key
    others = {"subset_size", "num_calibration_batches", "calib_batches", "num_calib_batches",
              "calibration_samples", "num_samples"}
    assert not {(c, f) for c, fs in fields.items() for f in fs if f in others}
    # openvino.quantize's old NNCF-style name still builds its config, with a warning
    ov = pm.get("optimizer", "openvino.quantize").cls
    with pytest.warns(FutureWarning, match="use 'calibration_batches'"):
        assert ov(subset_size=32).config.calibration_batches == 32


def test_describe_lists_a_fields_deprecated_names(capsys):
    from modelopt_core.cli import main

    assert main(["describe", "openvino.quantize", "--json"]) == 0
    [d] = json.loads(capsys.readouterr().out)
    opts = {o["name"]: o for o in d["options"]}
    assert opts["calibration_batches"]["aliases"] == ["subset_size"]
    assert "aliases" not in opts["preset"]
    assert main(["describe", "openvino.quantize"]) == 0
    assert "deprecated old name(s), still accepted: subset_size" in capsys.readouterr().out
