"""INT8 calibration inputs of the ``tensorrt`` exporter: the calibration cache a build reuses
(``calibration_cache``: ``history:<i>``, a ``calibration.cache`` file or a saved tensorrt
artifact) or else the session's calibration batches at one shape. The calibrator that feeds
them to TensorRT is :func:`.engine.make_calibrator`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import modelopt_core as mo

#: the file the calibration cache is saved as, next to model.bin
CACHE_FILE = "calibration.cache"
_MAX_CACHE_BYTES = 64 << 20


def _cache_from(spec: str, ctx: Any) -> tuple[bytes, str]:
    """The calibration cache ``spec`` names (see ``calibration_cache``), and where from."""
    if spec.startswith("history:"):
        try:
            art = ctx.history[int(spec.split(":", 1)[1])]
        except (ValueError, IndexError):
            raise mo.ConfigError(f"tensorrt: calibration_cache={spec!r} names no artifact of "
                                 f"the session history ({len(ctx.history)} entries).") from None
        cache = getattr(art.model, "calibration_cache", None)
        if not cache:
            raise mo.ConfigError(f"tensorrt: calibration_cache={spec!r} is a {art.format!r} "
                                 "artifact without a calibration cache; give an INT8 tensorrt "
                                 "artifact built by calibration.")
        return cache, spec
    path = Path(spec)
    if path.is_dir():  # a saved tensorrt artifact: loaded (hash-checked) like any artifact
        art = mo.load_artifact(path)
        cache = getattr(art.model, "calibration_cache", None)
        if art.format != "tensorrt" or not cache:
            raise mo.ConfigError(f"tensorrt: {path} is a {art.format!r} artifact without "
                                 f"{CACHE_FILE}; give an INT8 tensorrt artifact or the file.")
        return cache, str(path)
    if not path.is_file():
        raise mo.ConfigError(f"tensorrt: calibration_cache={spec!r} is neither 'history:<i>', "
                             "a file nor an artifact folder.")
    if path.stat().st_size > _MAX_CACHE_BYTES:
        raise mo.ConfigError(f"tensorrt: {path} is larger than {_MAX_CACHE_BYTES} bytes; it is "
                             "not a calibration cache.")
    return path.read_bytes(), str(path)


def _calibration_input(cfg: Any, names: Sequence[str], specs: Sequence[mo.TensorSpec],
                       ctx: Any, who: str, notes: list[str]
                       ) -> tuple[list[tuple[Any, ...]], list[list[int]] | None, bytes | None,
                                  str]:
    """(calibration batches, the calibration shapes per input or None, the cache, where the
    cache came from): with ``cfg.calibration_cache`` (``cfg``: a
    :class:`~.engine.TrtBuildConfig`) the cache and no batches, else up to
    ``calibration_batches`` of the session's batches of the first one's shapes, in the input
    dtypes of ``specs`` (float tensors), ordered as ``names``."""
    import torch

    cache, source = _cache_from(cfg.calibration_cache, ctx) if cfg.calibration_cache else (
        None, "")
    batches: list[tuple[Any, ...]] = []
    if cache is None:
        if ctx is None:
            raise mo.DataError(f"{who}: int8=True needs calibration data (Session("
                               "calibration_data=...)) or calibration_cache=.")
        drawn = ctx.calibration_batches(who, cfg.calibration_batches)
        shape0 = [tuple(x.shape) for x in drawn[0]]
        batches = [b for b in drawn if [tuple(x.shape) for x in b] == shape0]
        if len(batches) < len(drawn):
            notes.append(f"{who}: calibrated on {len(batches)} of {len(drawn)} calibration "
                         f"batches (TensorRT calibrates at one shape, {shape0}; the others "
                         "were skipped)")
        fdt = {s.name: getattr(torch, s.dtype, None) for s in specs}
        batches = [tuple(x.to(fdt[n]) if x.is_floating_point() and fdt.get(n) is not None
                         else x for n, x in zip(names, b)) for b in batches]
        shapes = [list(x.shape) for x in batches[0]]
    else:
        shapes = None
        notes.append(f"{who}: INT8 scales from the calibration cache of {source} "
                     "(no calibration run)")
    return batches, shapes, cache, source
