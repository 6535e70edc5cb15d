"""The contract of profilers, formats and commands."""

from __future__ import annotations

import copy
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import modelopt_core as mo

from .contract import (
    _check_untouched,
    _close,
    _fail,
    _load,
    _on_models,
    _require,
    _resolve,
    _skip_unavailable,
    _source,
    _who,
    check_config,
    fingerprint,
    small_overrides,
)

__all__ = ["check_command", "check_format", "check_profiler"]


def _plain_metric(v: Any) -> bool:
    """None, text, a finite number, or a list/dict of those (kept in the JSON report)."""
    if v is None or isinstance(v, str | bool):
        return True
    if isinstance(v, int | float):
        return math.isfinite(v)
    if isinstance(v, list | tuple):
        return all(_plain_metric(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _plain_metric(x) for k, x in v.items())
    return False


def check_profiler(name_or_cls: Any, pm: Any = None, *, backends: Any = None,
                   config: dict | None = None) -> None:
    """Config, and a profile of the check's model on each of ``backends`` (default: torch
    and onnxruntime where registered): a dict of plain, finite metrics, every key declared
    in ``columns``, the artifact and the user's model untouched."""
    cls, pm = _resolve("profiler", name_or_cls, pm)
    check_config(cls, pm)
    _skip_unavailable(cls)
    who, values = _who(cls), small_overrides(cls) if config is None else dict(config)
    registered = {i.name for i in pm.components("backend")}
    if backends is None:
        backends = [b for b in ("torch", "onnxruntime") if b in registered]
    declared = {c.name for c in cls.columns}
    for backend in backends:
        bcls = pm.get("backend", backend).cls
        _skip_unavailable(bcls)

        def run(w: Any, bcls: type = bcls) -> None:
            s, art = _source(w, pm, next((f for f in ("torch", "onnx") if f in bcls.accepts),
                                         bcls.accepts[0]))
            before = fingerprint(art, pm)
            with _load(s, bcls, art) as r:
                metrics = cls(**values).profile(r, art, s.context())
            on = f"on {bcls.name!r}"
            _require(isinstance(metrics, dict), who, "returns a dict", f"{on}: {metrics!r}")
            for k, v in metrics.items():
                _require(isinstance(k, str) and _plain_metric(v), who,
                         "returns plain, finite data", f"{on}: {k}={v!r}")
            json.dumps(metrics, allow_nan=False)
            undeclared = sorted(set(metrics) - declared)
            _require(not undeclared, who, "declares every key it returns in `columns` "
                     "(mo.Column)", f"{on}: returns {undeclared}")
            _check_untouched(who, w, art, before, pm)

        _on_models(who, run)


def check_format(name_or_cls: Any, pm: Any = None) -> None:
    """An artifact of the format (exported from the check's model) saves through the Format:
    it returns the files it wrote (relative, existing, the ``primary`` among them, none
    unlisted), leaves the artifact untouched, and ``mo.load_artifact`` reads the folder back
    into an artifact of the format that runs like the saved one."""
    cls, pm = _resolve("format", name_or_cls, pm)
    check_config(cls, pm)
    _skip_unavailable(cls)
    who = _who(cls)

    def run(w: Any) -> None:
        s, art = _source(w, pm, cls.name)
        before = fingerprint(art, pm)
        with tempfile.TemporaryDirectory() as d:
            folder = Path(d) / "direct"
            folder.mkdir()
            files = cls().save(art, folder)
            rule = "save() returns the files it wrote, relative to the folder"
            _require(isinstance(files, list | tuple) and all(isinstance(f, str) for f in files),
                     who, rule, repr(files))
            for f in files:
                _require(not Path(f).is_absolute() and "\\" not in f and (folder / f).is_file(),
                         who, rule, f"{f!r} is not a '/'-separated file in the folder")
            if cls.primary:
                _require(cls.primary in files, who, "writes its primary file",
                         f"{cls.primary!r} not in {files}")
            written = {p.relative_to(folder).as_posix() for p in folder.rglob("*")
                       if p.is_file()}
            _require(written <= set(files), who, "save() lists every file it writes",
                     f"unlisted: {sorted(written - set(files))}")
            path = art.save(Path(d) / "artifact", plugins=pm)
            skeleton = copy.deepcopy(w.model) if cls.name == "torch" else None
            back = mo.load_artifact(path, model=skeleton, plugins=pm)
        _check_untouched(who, w, art, before, pm)
        _require(back.format == cls.name, who, "loads back in its format", repr(back.format))
        for info in pm.components("backend"):
            b = info.cls
            if cls.name in b.accepts and b.availability()[0]:
                with _load(s, b, art) as r, _load(s, b, back) as r2:
                    _close(who, f"the loaded artifact runs like the saved one on {b.name!r}",
                           r2(w.x), r(w.x), rtol=1e-5, atol=1e-5)
                break

    _on_models(who, run)


def check_command(name: Any, pm: Any = None) -> None:
    """A plugin command (``register_commands``): a help line, ``setup(parser)`` adds its
    arguments to a fresh parser without error, ``--help`` prints and exits 0, ``run`` is
    callable and ``examples`` is text."""
    import argparse
    import contextlib
    import io

    pm = pm or mo.get_plugin_manager()
    info = name
    if isinstance(name, str):
        found = [c for c in pm.commands() if c.name == name]
        if not found:
            raise mo.UnknownComponentError(
                f"no command named {name!r}. Plugin commands: "
                f"{', '.join(c.name for c in pm.commands()) or '(none)'}.")
        info = found[0]
    who = f"command {info.name!r}"
    _require(isinstance(info.help, str) and info.help.strip(), who, "has a help line")
    _require(isinstance(info.examples, str), who, "its examples are text")
    _require(callable(info.run), who, "run is callable")
    parser = argparse.ArgumentParser(prog=f"modelopt {info.name}", description=info.help)
    try:
        info.setup(parser)
    except Exception as e:  # noqa: BLE001 - any error here is the finding
        _fail(who, "setup(parser) adds its arguments", f"{type(e).__name__}: {e}")
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            parser.parse_args(["--help"])
    except SystemExit as e:
        _require(e.code in (0, None), who, "--help exits 0", repr(e.code))
    else:
        _fail(who, "--help prints the help and exits")
    _require(f"modelopt {info.name}" in out.getvalue(), who, "--help prints its usage")
