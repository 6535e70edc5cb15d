"""The routes of :mod:`modelopt_serve.variants`: ``GET /variants[?window=N]`` (the live
verdict over each variant's newest N answers, default 1000),
``POST /variants`` (set weights or promote, behind the admin token) and ``POST /feedback``
(labels for answered requests).

The admin token comes from ``--admin-token`` or ``MODELOPT_ADMIN_TOKEN``, sent as
``Authorization: Bearer TOKEN`` or ``X-Admin-Token: TOKEN`` and compared in constant time.
A server started without one refuses every change (403); a wrong or missing token gets 401.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from .errors import AdminAuthError, AdminDisabledError, ServeError, VariantConfigError
from .variants import VERDICT_SAMPLES

__all__ = ["variant_routes"]

log = logging.getLogger("modelopt.serve")


def _error(e: ServeError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(e, AdminAuthError) else None
    return JSONResponse({"error": type(e).__name__, "detail": str(e)},
                        status_code=getattr(e, "http_status", 400), headers=headers)


def check_token(request: Request, token: str | None) -> None:
    """Raise unless ``request`` carries the admin ``token`` (see the module doc)."""
    if token is None:
        raise AdminDisabledError("POST /variants is off: this server was started without an "
                                 "admin token; restart it with --admin-token TOKEN (or "
                                 "MODELOPT_ADMIN_TOKEN) to change weights without a restart.")
    auth = request.headers.get("authorization", "")
    given = auth[7:] if auth[:7].lower() == "bearer " else request.headers.get("x-admin-token")
    if not given or not hmac.compare_digest(given.encode(), token.encode()):
        raise AdminAuthError("POST /variants needs the admin token: send 'Authorization: "
                             "Bearer TOKEN' (or 'X-Admin-Token: TOKEN') with the token the "
                             "server was started with.")


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"null")
    except ValueError as e:
        raise VariantConfigError(f"{request.url.path}: the body is not JSON ({e}).") from None
    if not isinstance(body, dict):
        raise VariantConfigError(f"{request.url.path}: expected a JSON object, got "
                                 f"{type(body).__name__}.")
    return body


def variant_routes(app: FastAPI, vs: Any, token: str | None) -> None:
    """Add the routes to ``app`` for the :class:`~modelopt_serve.variants.VariantSet` ``vs``."""

    @app.get("/variants")
    async def variants(window: str = str(VERDICT_SAMPLES)) -> Any:
        try:  # the bootstrap runs off the event loop
            if not window.isdigit():
                raise VariantConfigError(f"GET /variants: window={window!r}; expected a "
                                         "count of answers per variant, e.g. ?window=500.")
            return await asyncio.to_thread(vs.report, int(window))
        except ServeError as e:
            return _error(e)

    @app.post("/variants")
    async def set_variants(request: Request) -> Any:
        try:
            check_token(request, token)
            body = await _json(request)
            unknown = set(body) - {"weights", "promote"}
            if unknown or not body:
                raise VariantConfigError(
                    f"POST /variants: expected {{\"weights\": {{NAME: PERCENT, ...}}}} or "
                    f"{{\"promote\": NAME}}, got keys {sorted(body)}.")
            weights = body.get("weights")
            if weights is not None and not isinstance(weights, dict):
                raise VariantConfigError("POST /variants: \"weights\" must be an object "
                                         "{NAME: PERCENT}.")
            table = vs.router.update(weights=weights, promote=body.get("promote"))
        except ServeError as e:
            return _error(e)
        if vs.on_change is not None:
            vs.on_change(table)
        log.info(json.dumps({"event": "variants_changed", "weights": table.weights,
                             "shadows": list(table.shadows), "version": table.version}))
        return {"weights": table.weights, "shadows": list(table.shadows),
                "version": table.version}

    @app.post("/feedback")
    async def feedback(request: Request) -> Any:
        try:
            body = await _json(request)
            return vs.feedback.label(body.get("request_id"), body.get("label"))
        except ServeError as e:
            return _error(e)
