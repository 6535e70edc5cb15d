"""Load-test client for a modelopt server (``modelopt bench-serve URL``).

It reads the server's input specs (``GET /spec``), builds single-row requests from them
before the clock starts (random values, distinct for the first ``MAX_FRESH`` requests, then
cycled; a ``repeat_fraction`` of them re-sends one of ``hot_set`` inputs, to exercise the result
cache) and keeps ``concurrency`` requests in flight with aiohttp over asyncio until
``requests`` were sent or ``duration_s`` passed. aiohttp, not httpx: on loopback the client
shares the server's cores, and httpx's async client spent about 2.5 ms of CPU per request
here against aiohttp's 0.23 ms (a small model's server needs 0.7 ms), so with httpx the
load generator, not the server, set the measured throughput. Loopback only unless
``allow_remote``: it is a load generator, not a tool to point at other people's servers.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import random
import time
from collections import Counter
from typing import Any
from urllib.parse import urlparse

from modelopt_core.errors import ConfigError

from . import codec
from .errors import ServeError

__all__ = ["check_url", "fetch_variants", "load_test", "make_inputs", "percentile", "run_load",
           "variants_table"]

MAX_REQUESTS = 1_000_000
MAX_DURATION_S = 3600.0
MAX_CONCURRENCY = 1024
#: distinct request bodies built up front; a longer run cycles through them
MAX_FRESH = 1024


def check_url(url: str, allow_remote: bool = False) -> str:
    """``url`` without a trailing slash; :class:`ConfigError` for a non-http URL or, unless
    ``allow_remote``, a host that is not loopback."""
    u = urlparse(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ConfigError(f"bench-serve: {url!r} is not an http(s) URL like "
                          "http://127.0.0.1:8000.")
    host = u.hostname
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not allow_remote:
        raise ConfigError(f"bench-serve: {host!r} is not a loopback address; the load generator "
                          "only targets this machine unless --allow-remote is given.")
    return url.rstrip("/")


def percentile(sorted_xs: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of sorted values, nearest rank; NaN when empty."""
    if not sorted_xs:
        return float("nan")
    k = max(0, min(len(sorted_xs) - 1, math.ceil(q / 100 * len(sorted_xs)) - 1))
    return sorted_xs[k]


def make_inputs(specs: list[dict[str, Any]], seed: int, sizes: dict[str, int] | None = None
                ) -> dict[str, Any]:
    """One single-row input per spec (``{"name", "shape", "dtype"}``): the leading symbolic dim
    is 1, other symbolic dims take ``sizes[name]`` or 8; floats are standard normal, integers
    0 or 1 (valid token ids and masks)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = {}
    for s in specs:
        shape = [1 if i == 0 and isinstance(d, str) else
                 (sizes or {}).get(d, 8) if isinstance(d, str) else int(d)
                 for i, d in enumerate(s["shape"])]
        dtype = getattr(torch, s["dtype"])
        if dtype.is_floating_point:
            out[s["name"]] = torch.randn(shape, generator=g).to(dtype)
        elif dtype == torch.bool:
            out[s["name"]] = torch.randint(0, 2, shape, generator=g).bool()
        else:
            out[s["name"]] = torch.randint(0, 2, shape, generator=g, dtype=dtype)
    return out


async def run_load(url: str, *, concurrency: int = 8, requests: int = 200,
                   duration_s: float | None = None, repeat_fraction: float = 0.0,
                   media_type: str = codec.TENSORS, allow_remote: bool = False,
                   timeout_s: float = 30.0, seed: int = 0, hot_set: int = 8,
                   headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Send ``requests`` (or as many as fit in ``duration_s``) ``/predict`` requests with
    ``concurrency`` in flight; returns counts and latency percentiles:
    ``{"requests", "ok", "errors", "status_counts", "variant_counts" (answers by their
    ``X-Variant``), "throughput_rps", "p50_ms", "p95_ms", "p99_ms", "duration_s", ...}``."""
    base = check_url(url, allow_remote)
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ConfigError(f"bench-serve: concurrency must be 1..{MAX_CONCURRENCY}, got "
                          f"{concurrency}.")
    if not 1 <= requests <= MAX_REQUESTS:
        raise ConfigError(f"bench-serve: requests must be 1..{MAX_REQUESTS}, got {requests}.")
    if duration_s is not None and not 0 < duration_s <= MAX_DURATION_S:
        raise ConfigError(f"bench-serve: duration_s must be in (0, {MAX_DURATION_S}], got "
                          f"{duration_s}.")
    if not 0.0 <= repeat_fraction <= 1.0:
        raise ConfigError(f"bench-serve: repeat_fraction must be in [0, 1], got "
                          f"{repeat_fraction}.")
    if media_type not in codec.MEDIA_TYPES:
        raise ConfigError(f"bench-serve: media type {media_type!r} is not one of "
                          f"{list(codec.MEDIA_TYPES)}.")
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(base, connector=connector, timeout=timeout) as client:
        spec = await _spec(client, base, timeout_s)
        rng = random.Random(seed)
        hot = [codec.encode_inputs(make_inputs(spec["inputs"], seed + 1_000_000 + i),
                                   media_type) for i in range(max(1, hot_set))]
        # built before the clock starts, so the client's own work does not cap the rate
        fresh = [codec.encode_inputs(make_inputs(spec["inputs"], seed + i), media_type)
                 for i in range(min(requests, MAX_FRESH))]
        latencies: list[float] = []
        statuses: Counter[str] = Counter()
        variants: Counter[str] = Counter()  # who answered (X-Variant), by the server's word
        sent = 0
        deadline = time.perf_counter() + (duration_s or MAX_DURATION_S)
        headers = {**(headers or {}), "content-type": media_type, "accept": media_type}

        async def worker() -> None:
            nonlocal sent
            while sent < requests and time.perf_counter() < deadline:
                i = sent
                sent += 1
                body = (rng.choice(hot) if rng.random() < repeat_fraction else
                        fresh[i % len(fresh)])
                t0 = time.perf_counter()
                try:
                    async with client.post("/predict", data=body, headers=headers) as r:
                        await r.read()
                        key = str(r.status)
                        if "x-variant" in r.headers:
                            variants[r.headers["x-variant"]] += 1
                except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                    key = type(e).__name__
                latencies.append(1e3 * (time.perf_counter() - t0))
                statuses[key] += 1

        t_start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t_start
    lat = sorted(latencies)
    ok = statuses.get("200", 0)
    return {"url": base, "requests": sent, "ok": ok, "errors": sent - ok,
            "status_counts": dict(statuses), "variant_counts": dict(variants),
            "concurrency": concurrency,
            "repeat_fraction": repeat_fraction, "media_type": media_type,
            "duration_s": elapsed, "throughput_rps": ok / elapsed if elapsed > 0 else 0.0,
            "p50_ms": percentile(lat, 50), "p95_ms": percentile(lat, 95),
            "p99_ms": percentile(lat, 99)}


async def _spec(client: Any, base: str, timeout_s: float) -> dict[str, Any]:
    """The server's ``GET /spec``; :class:`ServeError` saying what is wrong when nothing
    listens at ``base``, it does not answer in time, or it is not a modelopt server."""
    import aiohttp

    try:
        async with client.get("/spec") as r:
            if r.status != 200:
                raise ServeError(f"bench-serve: {base} answered GET /spec with HTTP {r.status}: "
                                 "is it a modelopt server (`modelopt serve ARTIFACT`)?")
            return await r.json()
    except aiohttp.ClientConnectorError as e:
        raise ServeError(f"bench-serve: nothing listens at {base} ({e.os_error.strerror or e}); "
                         "start the server first (`modelopt serve ARTIFACT --port N`) or fix "
                         "the URL.") from None
    except asyncio.TimeoutError:
        raise ServeError(f"bench-serve: {base} did not answer GET /spec within {timeout_s:g} "
                         "s; is the server still loading (GET /ready)?") from None
    except (aiohttp.ContentTypeError, ValueError) as e:
        raise ServeError(f"bench-serve: {base} answered GET /spec with something that is not "
                         f"JSON ({type(e).__name__}): is it a modelopt server?") from None


def load_test(url: str, **kwargs: Any) -> dict[str, Any]:
    """:func:`run_load` from synchronous code (its own event loop)."""
    return asyncio.run(run_load(url, **kwargs))


def fetch_variants(url: str, allow_remote: bool = False, timeout_s: float = 30.0
                   ) -> dict[str, Any]:
    """The server's ``GET /variants`` (its live verdict per variant)."""
    import httpx

    base = check_url(url, allow_remote)
    r = httpx.get(f"{base}/variants", timeout=timeout_s)
    if r.status_code != 200:
        raise ServeError(f"bench-serve: {base} answered GET /variants with HTTP {r.status_code}"
                         ": is it a modelopt server of this version?")
    return r.json()


def variants_table(report: dict[str, Any]) -> list[str]:
    """``GET /variants`` as lines: per variant its role, weight, requests, error rate,
    p50/p99 with their 95% intervals, throughput, agreement and feedback accuracy, and the
    verdict against the primary in ``modelopt compare``'s words."""

    def ci(v: list[float] | None) -> str:
        return "-" if not v else f"{v[0]:.2f} ({v[1]:.2f}-{v[2]:.2f})"

    lines = [(f"{'variant':<14} {'role':<8} {'weight':>6} {'requests':>8} {'err%':>6} "
              f"{'p50 ms (95% CI)':>22} {'p99 ms (95% CI)':>24} {'req/s':>8}")]
    for name, v in report["variants"].items():
        lat = v["latency_ms"]
        err = "-" if v["error_rate"] is None else f"{100 * v['error_rate']:.2f}"
        rps = "-" if v["throughput_rps"] is None else f"{v['throughput_rps']:.1f}"
        lines.append(f"{name:<14} {v['role']:<8} {v['weight']:>6.1f} {v['requests']:>8} "
                     f"{err:>6} {ci(lat['p50']):>22} {ci(lat['p99']):>24} {rps:>8}")
    primary = report["primary"]
    for name, v in report["variants"].items():
        ag = v.get("agreement")
        if ag:
            top1 = "-" if ag["top1_agreement"] is None else f"{ag['top1_agreement']:.4f}"
            cos = "-" if ag["cosine_mean"] is None else f"{ag['cosine_mean']:.6f}"
            mae = "-" if ag["max_abs_error"] is None else f"{ag['max_abs_error']:.4g}"
            lines.append(f"{name} (shadow) vs {primary}: {ag['compared']} compared, "
                         f"{ag['dropped']} dropped, {ag['failed']} failed; top-1 agreement "
                         f"{top1}, mean cosine {cos}, max abs error {mae}")
        fb = v["feedback"]
        if fb["labelled_rows"]:
            lines.append(f"{name}: feedback accuracy {fb['accuracy']:.4f} over "
                         f"{fb['labelled_rows']} labelled rows")
        vs = v.get("vs_primary")
        if vs is None:
            continue
        if vs["verdict"] is None:
            lines.append(f"verdict {name} vs {primary}: none yet ({vs['reason']}).")
            continue
        r, (lo, hi) = vs["ratio_b_over_a"], vs["ci95"]
        what = {"B faster": "faster", "B slower": "slower"}.get(vs["verdict"],
                                                               "no significant difference")
        lines.append(f"verdict {name} vs {primary}: {what} (p50 ratio {name}/{primary} "
                     f"{r:.3f}, 95% CI {lo:.3f} to {hi:.3f}; {vs['basis']}, n {vs['n_a']}/"
                     f"{vs['n_b']}).")
    return lines
