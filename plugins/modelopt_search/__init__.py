"""modelopt_search: automatic optimization. ``Session.optimize`` / ``modelopt optimize`` run an
Optuna study over recipes built from the components' declared search spaces (prune ->
recovery -> precision -> runtime options), each measured on the real runtime under an
accuracy budget; resumable, shareable across workers through Optuna's RDB storage."""

from __future__ import annotations

__all__ = ["SearchError", "SearchResult"]  # the search itself: .optimize.optimize


def __getattr__(name: str):  # lazy: importing the package stays light (no optuna/torch)
    if name == "SearchResult":
        from .optimize import SearchResult

        return SearchResult
    if name == "SearchError":
        from .errors import SearchError

        return SearchError
    raise AttributeError(name)
