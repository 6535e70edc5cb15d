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
