"""Bearer-token authentication of the admin API (``VOICEBOT_ADMIN_TOKEN``); the API is off without a token."""

from __future__ import annotations

import hmac

import structlog
from aiohttp import web

from .common import json_error

TOKEN_ENV = "VOICEBOT_ADMIN_TOKEN"
log = structlog.get_logger("voicebot.api")


def bearer_auth(token: str | None):
    """Middleware: 503 for every route when no token is configured, 401 without the right one."""
    expected = token.encode() if token else None

    @web.middleware
    async def authenticate(request: web.Request, handler):
        if expected is None:
            return json_error(503, f"admin API disabled: set {TOKEN_ENV}")
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return json_error(401, "missing bearer token (Authorization: Bearer <token>)",
                              **{"WWW-Authenticate": 'Bearer realm="voicebot"'})
        if not hmac.compare_digest(presented.strip().encode(), expected):
            log.warning("admin_api_wrong_token", path=request.path, remote=request.remote)
            return json_error(401, "wrong bearer token",
                              **{"WWW-Authenticate": 'Bearer realm="voicebot", error="invalid_token"'})
        return await handler(request)

    return authenticate
