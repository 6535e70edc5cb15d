"""Scale out on Ray Serve: the same app (batcher, cache, routes, metrics) in every replica.

``ray_app(path, num_replicas=2)`` returns a bound Ray Serve application; ``serve.run`` it on a
local or remote Ray cluster. Each replica loads the artifact folder (it must be readable on
every node: a shared filesystem or the same path), builds its own replica pool, result cache and
:class:`~modelopt_serve.DynamicBatcher`, and serves the routes of
:func:`~modelopt_serve.app.create_app` behind Ray's HTTP proxy, which spreads requests over the
replicas. ``/metrics`` answers for the replica that got the scrape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelopt_core.errors import BackendUnavailableError

__all__ = ["RAY_HINT", "ray_app"]

RAY_HINT = 'pip install -e ".[serve-ray]"'


def ray_app(artifact_path: str | Path, *, num_replicas: int = 2,
            backend: str | None = None, num_cpus: float = 1.0,
            ray_actor_options: dict[str, Any] | None = None, **options: Any) -> Any:
    """A Ray Serve application serving the artifact folder at ``artifact_path`` with
    ``num_replicas`` replicas of ``num_cpus`` CPUs each; ``options`` go to
    :func:`~modelopt_serve.app.create_app` (batcher, cache and pool options). Run it with
    ``ray.serve.run(app, route_prefix="/")``."""
    try:
        from ray import serve
    except ImportError as e:
        raise BackendUnavailableError(f"modelopt_serve.ray_app needs Ray Serve ({e}); install it "
                                      f"with {RAY_HINT}.") from None
    path = Path(artifact_path).resolve()
    if not (path / "manifest.json").is_file():
        import modelopt_core as mo

        mo.load_artifact(path)  # raises the artifact error naming the folder
    import modelopt_core as mo

    from .app import ServeConfig

    # one typed, checked object per replica, sent as plain data (errors here, not in a replica)
    options = mo.config_to_data(mo.build_config(
        ServeConfig, {"freeze_gc": True, **options, "load_in_background": False}, "ray_app"))
    actor = {"num_cpus": num_cpus, **(ray_actor_options or {})}

    @serve.deployment(name="modelopt", num_replicas=num_replicas, ray_actor_options=actor)
    @serve.ingress()
    class ModeloptServe:
        """One replica: the modelopt serving app over the artifact folder."""

        def __init__(self, path: str, backend: str, options: dict[str, Any]) -> None:
            self.path, self.backend, self.options = path, backend, options

        def __serve_build_asgi_app__(self) -> Any:
            from modelopt_serve.app import create_app

            return create_app(self.path, backend=self.backend, **self.options)

    return ModeloptServe.bind(str(path), backend, options)
