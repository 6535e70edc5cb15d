"""Scale out on Ray Serve: the same app (batcher, cache, routes, metrics) in every replica.

``ray_app(path, num_replicas=2)`` returns a bound Ray Serve application; ``serve.run`` it on a
local or remote Ray cluster. Each replica loads the artifact folder (it must be readable on
every node: a shared filesystem or the same path), builds its own replica pool, result cache and
:class:`~modelopt_serve.DynamicBatcher`, and serves the routes of
:func:`~modelopt_serve.app.create_app` behind Ray's HTTP proxy, which spreads requests over the
replicas. ``/metrics`` answers for the replica that got the scrape.

Variants (``variants=``, ``shadow=``... as :func:`~modelopt_serve.app.create_app`): every
replica serves all of them with the same split (the client-key hash is the same in every
process, so a client stays on one variant whichever replica it reaches). ``POST /variants``
reaches one replica; it applies the change at once and hands it to a small Ray actor that
holds the current table, which every replica polls every :data:`SYNC_S` seconds: the whole
deployment follows within about that. ``GET /variants`` reports the replica it reaches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelopt_core.errors import BackendUnavailableError

__all__ = ["RAY_HINT", "SYNC_S", "ray_app"]

RAY_HINT = 'pip install -e ".[serve-ray]"'
#: how often each replica reads the shared variant weights
SYNC_S = 0.5
#: create_app's variant keywords (not ServeConfig options)
_APP_KEYS = ("variants", "shadow", "name", "admin_token", "split_seed", "feedback_max")


class _WeightsStore:
    """The deployment's current variant table (a Ray actor): the last one a replica put,
    numbered in the order they arrived."""

    def __init__(self) -> None:
        self.table: dict[str, Any] | None = None

    def put(self, weights: dict[str, float], shadows: list[str]) -> int:
        version = (self.table["version"] if self.table else 0) + 1
        self.table = {"weights": weights, "shadows": shadows, "version": version}
        return version

    def get(self) -> dict[str, Any] | None:
        return self.table


def _share(vs: Any, store: Any) -> None:
    """Make ``vs`` (a replica's VariantSet) put its changes in ``store`` and follow the changes
    other replicas put there (a daemon thread polling every :data:`SYNC_S`)."""
    import threading

    import ray

    seen = [0]

    def on_change(table: Any) -> None:
        store.put.remote(dict(table.weights), list(table.shadows))

    def follow() -> None:
        import logging

        while True:
            try:
                t = ray.get(store.get.remote(), timeout=10)
                if t is not None and t["version"] > seen[0]:
                    seen[0] = t["version"]
                    # the store's numbering, above any local one: every replica converges
                    vs.router.apply(t["weights"], t["shadows"],
                                    max(vs.router.table.version, 0) + 1)
            except Exception as e:  # noqa: BLE001 - keep following; say why once a while
                logging.getLogger("modelopt.serve").warning(
                    f'{{"event": "variant_sync_failed", "error": "{type(e).__name__}"}}')
            threading.Event().wait(SYNC_S)

    vs.on_change = on_change
    threading.Thread(target=follow, name="modelopt-variant-sync", daemon=True).start()


def ray_app(artifact_path: str | Path, *, num_replicas: int = 2,
            backend: str | None = None, num_cpus: float = 1.0,
            ray_actor_options: dict[str, Any] | None = None, **options: Any) -> Any:
    """A Ray Serve application serving the artifact folder at ``artifact_path`` with
    ``num_replicas`` replicas of ``num_cpus`` CPUs each; ``options`` go to
    :func:`~modelopt_serve.app.create_app` (batcher, cache and pool options, and its variant
    keywords: see the module doc). Run it with ``ray.serve.run(app, route_prefix="/")``."""
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

    if options.pop("capture", None):
        raise mo.ConfigError("ray_app: capture writes one folder from one process, and every "
                             "Ray replica is a process: capture on a server without Ray.")
    app_kw = {k: options.pop(k) for k in _APP_KEYS if k in options}
    app_kw["variants"] = _resolved(app_kw.get("variants") or {})
    # one typed, checked object per replica, sent as plain data (errors here, not in a replica)
    options = mo.config_to_data(mo.build_config(
        ServeConfig, {"freeze_gc": True, **options, "load_in_background": False}, "ray_app"))
    if app_kw["variants"]:  # mismatched inputs, bad weights: refused here, before any replica
        from .app import create_app

        create_app(str(path), backend=backend, **app_kw, **options)
    store = None
    if app_kw["variants"]:
        import ray

        store = ray.remote(num_cpus=0)(_WeightsStore).remote()
    actor = {"num_cpus": num_cpus, **(ray_actor_options or {})}

    @serve.deployment(name="modelopt", num_replicas=num_replicas, ray_actor_options=actor)
    @serve.ingress()
    class ModeloptServe:
        """One replica: the modelopt serving app over the artifact folder."""

        def __init__(self, path: str, backend: str, options: dict[str, Any],
                     app_kw: dict[str, Any], store: Any) -> None:
            self.path, self.backend, self.options = path, backend, options
            self.app_kw, self.store = app_kw, store

        def __serve_build_asgi_app__(self) -> Any:
            from modelopt_serve.app import create_app
            from modelopt_serve.ray_deploy import _share

            app = create_app(self.path, backend=self.backend, **self.app_kw, **self.options)
            if self.store is not None:
                _share(app.state.variants, self.store)
            return app

    return ModeloptServe.bind(str(path), backend, options, app_kw, store)


def _resolved(variants: dict[str, Any]) -> dict[str, Any]:
    """Variant artifacts as absolute folder paths (a replica may run in another directory)."""
    out = {}
    for name, spec in variants.items():
        if isinstance(spec, tuple):
            out[name] = (str(Path(spec[0]).resolve()), spec[1])
        elif isinstance(spec, dict):
            out[name] = {**spec, "artifact": str(Path(spec["artifact"]).resolve())}
        else:
            out[name] = str(Path(spec).resolve())
    return out
