"""Silencing chatty converters (progress bars, per-op log warnings, version notices) while a
component runs one; their errors still raise."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterator, Mapping

__all__ = ["quiet"]


@contextlib.contextmanager
def quiet(stderr: bool = False, env: Mapping[str, str] | None = None) -> Iterator[io.StringIO]:
    """Inside: stdout (and with ``stderr``, stderr and Python warnings) goes to the yielded
    buffer, log records below ERROR are dropped, and ``env`` variables are set; everything is
    restored on exit."""
    buf = io.StringIO()
    saved_env = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    before = logging.root.manager.disable
    logging.disable(max(before, logging.WARNING))
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(contextlib.redirect_stdout(buf))
            if stderr:
                stack.enter_context(contextlib.redirect_stderr(buf))
                stack.enter_context(warnings.catch_warnings())
                warnings.simplefilter("ignore")
            yield buf
    finally:
        logging.disable(before)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
