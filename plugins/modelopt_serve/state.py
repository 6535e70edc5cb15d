"""One served artifact: :class:`ServeState` (its artifact, replica pool, cache, batcher and
metrics view; an app holds one per variant) and :func:`load_served`."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from . import codec
from .metrics import ServeMetrics

__all__ = ["ServeState", "load_served"]

log = logging.getLogger("modelopt.serve")


class ServeState:
    """What one served artifact (one variant of an app) holds: the artifact, and once loaded
    its replica pool, cache and batcher, and its view of the app's metrics."""

    def __init__(self, artifact: Any, backend: str | None, options: dict[str, Any],
                 variant: str | None = None, metrics: ServeMetrics | None = None) -> None:
        import modelopt_core as mo
        from modelopt_core.recipe import build_model

        self.model = build_model(options.get("model"), options.get("model_kwargs"), "serve")
        if isinstance(artifact, mo.ModelArtifact):
            self.artifact, self.name = artifact, artifact.name
        else:  # a loaded artifact's own name is its last step's; the folder says more
            self.artifact = load_served(Path(artifact), self.model)
            self.name = Path(artifact).name
        from .replicas import runtime_of

        self.backend = runtime_of(self.artifact, backend)[0]
        self.options = dict(options)
        self.pool: Any = None
        self.cache: Any = None
        self.batcher: Any = None
        self.load_error: str | None = None
        self.shutting_down = False
        #: called (from the loading thread) when the replicas fail to load; the CLI stops
        self.on_load_failed: Any = None
        #: the name of this variant (``X-Variant``, the ``variant`` label): the folder's
        self.variant = variant or self.name
        self.metrics = (metrics or ServeMetrics()).bind(self.variant, self.stats, self.health)

    @property
    def ready(self) -> bool:
        return (self.batcher is not None and not self.shutting_down
                and self.pool.down is None)

    @property
    def loading(self) -> bool:
        """Its replicas are still loading (not ready, not failed, not stopping)."""
        return self.batcher is None and self.load_error is None and not self.shutting_down

    def health(self) -> dict[str, Any]:
        """What the alerting rules watch besides the batcher: readiness, queue capacity and
        replica restarts."""
        return {"ready": self.ready, "queue_capacity": self.options["max_queue"],
                "replica_restarts": self.pool.restarts if self.pool is not None else 0}

    def stats(self) -> dict[str, Any] | None:
        return self.batcher.stats() if self.batcher is not None else None

    def load(self) -> None:
        """Build the replica pool, the cache and the batcher (blocking: run it in a thread)."""
        from .batcher import DynamicBatcher
        from .cache import ResultCache
        from .replicas import ReplicaPool

        o = self.options
        try:
            self.pool = ReplicaPool(self.artifact, backend=self.backend, workers=o["workers"],
                                    options=o["backend_options"], mode=o["mode"],
                                    cores=o["cores"], max_restarts=o["max_restarts"],
                                    model=self.model)
            if o["cache_size"] > 0:
                self.cache = ResultCache(max_entries=o["cache_size"],
                                         max_bytes=int(o["cache_mb"] * 2**20),
                                         ttl_s=o["cache_ttl_s"])
            batcher = DynamicBatcher(
                self.pool, max_batch_size=o["max_batch_size"], max_delay_ms=o["max_delay_ms"],
                max_idle_ms=o["max_idle_ms"],
                preferred_batch_sizes=tuple(o["preferred_batch_sizes"]),
                max_queue=o["max_queue"], timeout_s=o["timeout_s"], cache=self.cache)
        except Exception as e:
            self.load_error = f"{type(e).__name__}: {e}"
            log.error(json.dumps({"event": "load_failed", "artifact": self.name,
                                  "backend": self.backend, "error": self.load_error}))
            self._free()
            if self.on_load_failed is not None:
                self.on_load_failed()
            raise
        warm_ms = self.warm_up()
        if o["freeze_gc"]:
            # a server process's startup objects (torch, the runtime, FastAPI: ~200k) live as
            # long as it does; frozen, the collector stops rescanning them, and its full
            # collections stop stalling every request in flight (~65-90 ms each, measured)
            import gc

            gc.collect()
            gc.freeze()
        self.batcher = batcher  # ready (and /ready says so) once warmed up
        log.info(json.dumps({"event": "ready", "artifact": self.name,
                             "backend": self.backend, "workers": o["workers"],
                             "warmup_ms": warm_ms}))

    def warm_up(self) -> float | None:
        """Take a request's whole path once per replica before ``/ready``: each codec's
        decode and encode and a run of the model on a spec-shaped input. Without it the first
        client request pays the codecs' lazy imports (``safetensors.torch`` pulls in about a
        second of torch modules) on the event loop, stalling every request in flight behind it,
        plus the runtime's first-run allocations. Returns the milliseconds it took, or None
        when it failed (logged; the server still serves: the model may refuse random inputs).
        """
        from .client import make_inputs

        t0 = time.perf_counter()
        specs = self.artifact.inputs
        try:
            named = make_inputs([s.to_data() for s in specs], seed=0)
            bodies = {m: codec.encode_inputs(named, m) for m in codec.MEDIA_TYPES}
            flat = [codec.decode_inputs(bodies[m], m, specs) for m in codec.MEDIA_TYPES][0]
            # the model: every thread replica, or as many runs as there are worker processes
            for r in self.pool.runners or [None] * self.pool.size:
                out = r.run_flat(list(flat)) if r is not None else self.pool.run(list(flat))
            result = self.pool.unflatten(out)
            for m in codec.MEDIA_TYPES:
                codec.encode_outputs(result, m)
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            log.warning(json.dumps({"event": "warmup_failed", "artifact": self.name,
                                    "error": f"{type(e).__name__}: {e}"}))
            return None
        return round(1e3 * (time.perf_counter() - t0), 1)

    def close(self) -> None:
        """Drain the batcher, then free the replicas."""
        self.shutting_down = True
        self._free()

    def _free(self) -> None:
        if self.batcher is not None:
            self.batcher.close(drain=True)
        if self.pool is not None:
            self.pool.close()

    def spec(self) -> dict[str, Any]:
        """What a client needs to build requests."""
        a = self.artifact
        return {"artifact": self.name, "format": a.format, "backend": self.backend,
                "inputs": [s.to_data() for s in a.inputs],
                "outputs": a.io.get("outputs"), "media_types": list(codec.MEDIA_TYPES),
                "max_batch_size": self.options["max_batch_size"],
                "max_body_mb": self.options["max_body_mb"]}


def load_served(path: Path, model: Any = None) -> Any:
    """``load_artifact(path, model=model)``, telling how to serve a torch-format artifact (its
    architecture is code, not in the folder) when ``model`` is missing."""
    import modelopt_core as mo

    try:
        return mo.load_artifact(path, model=model)
    except mo.ArtifactError as e:
        if model is None and "weights only" in str(e):
            import re

            named = re.search(r"model=([\w.]+)\.(\w+)\(", str(e))  # the class it recorded
            ref = f"{named[1]}:{named[2]}" if named else "package.module:Class"
            raise mo.ArtifactError(
                f"serve: {e} To serve it, name the architecture: `modelopt serve {path} "
                f"--model {ref} [--model-kwargs JSON]`, or create_app(..., "
                f"model=...) / ReplicaPool(..., model=...) from Python; or serve an exported "
                f"artifact (ONNX, OpenVINO) instead.") from None
        raise
