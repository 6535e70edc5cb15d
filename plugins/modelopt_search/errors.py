"""Errors of automatic optimization (``Session.optimize``, ``modelopt optimize``)."""

from __future__ import annotations

import modelopt_core as mo

__all__ = ["SearchError"]


class SearchError(mo.ConfigError):
    """A search cannot run as asked: bad target, objective, space or storage; the message
    names the setting and what to do."""
