"""How large a request body the server reads, by route group, and the answer past it.

aiohttp reads a body only when a handler asks for it, and refuses one larger than the request's
``client_max_size`` (413) before the handler has acted on anything. Every route gets ``MAX_BODY_BYTES``, the
application's limit: carrier webhooks and callbacks carry a few form fields or one small JSON event (Twilio's
voice webhook is about 1 KB, a Telnyx call event 2 KB), and the admin API's commands are as small. The routes
that take a file (a campaign's contact list, a do-not-call import: voicebot/api) read it with
:func:`read_body` and ``MAX_UPLOAD_BYTES``. Past either, :func:`refuse_large_bodies` answers 413 in JSON
naming the limit, and logs the route, the limit and the declared size.
"""

from __future__ import annotations

import structlog
from aiohttp import web

log = structlog.get_logger("voicebot.http")

MAX_BODY_BYTES = 64 * 1024               # every route: webhooks, callbacks, the admin API's commands
MAX_UPLOAD_BYTES = 64 * 1024 * 1024      # routes taking a file: ~a million contacts or do-not-call numbers


class BodyTooLarge(web.HTTPRequestEntityTooLarge):
    """A body over ``limit`` bytes (aiohttp's own exception does not keep the limit)."""

    def __init__(self, limit: int) -> None:
        super().__init__(max_size=limit)
        self.limit = limit


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, up to ``limit`` bytes (BodyTooLarge past it)."""
    try:
        return await (request.read() if limit == request.client_max_size
                      else request.clone(client_max_size=limit).read())
    except BodyTooLarge:
        raise
    except web.HTTPRequestEntityTooLarge:
        raise BodyTooLarge(limit) from None


@web.middleware
async def refuse_large_bodies(request: web.Request, handler) -> web.StreamResponse:
    """A body over its route's limit: 413 with ``{"error": …}`` naming the limit, and a log line."""
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge as exc:
        limit = getattr(exc, "limit", request.client_max_size)
        log.warning("http_body_too_large", method=request.method, path=request.path, limit=limit,
                    content_length=request.content_length, peer=request.remote)
        return web.json_response({"error": f"request body over the {limit}-byte limit of {request.path}"},
                                 status=413)
