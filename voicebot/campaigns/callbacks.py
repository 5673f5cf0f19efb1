"""The carriers' progress callbacks for campaign calls: Twilio's status and AMD callbacks
(``POST /campaigns/twilio/status``) and Telnyx's call events (``POST /campaigns/telnyx/events``).

Each is checked the carrier's way before anything changes (Twilio: X-Twilio-Signature over our public URL and the
form; Telnyx: its ed25519 signature over the timestamp and the body): a forged one is answered 403 and changes
nothing, and one for an attempt token that is not ours likewise. A genuine one is applied to its attempt; a
repeated or out-of-order one changes nothing (the store keeps each attempt's state moving forward only)."""

from __future__ import annotations

import structlog
from aiohttp import web

from ..telephony.rest.base import CallbackRefused
from .service import CALLBACK_PATHS

log = structlog.get_logger("voicebot.campaigns")


def add_routes(app: web.Application, services) -> None:
    for carrier, path in CALLBACK_PATHS.items():
        app.router.add_post(path, _handler(services, carrier))


def _handler(services, carrier: str):
    async def callback(request: web.Request) -> web.Response:
        campaigns = services.campaigns
        client = services.call_control(carrier)
        if campaigns is None or client is None:
            log.warning("campaign_callback_refused", carrier=carrier,
                        reason="campaigns are not running here" if campaigns is None
                        else f"no {carrier} call-control client is configured")
            return web.Response(status=503, text="campaigns are not available on this server\n")
        body = await request.read()     # at most http_limits.MAX_BODY_BYTES (413 past it)
        url = services.settings.public_url.rstrip("/") + request.path_qs
        try:
            progress = client.read_callback(url, request.headers, body)
        except CallbackRefused as exc:
            log.warning("campaign_callback_refused", carrier=carrier, reason=str(exc), path=request.path)
            return web.Response(status=403, text=f"{exc}\n")
        if progress is None:        # genuine, but nothing to record (e.g. Twilio's "initiated")
            return web.Response(status=204)
        token = request.query.get("attempt") or progress.attempt_token
        attempt_id = campaigns.attempt_of(token)
        if attempt_id is None:
            log.warning("campaign_callback_refused", carrier=carrier, reason="attempt token is not genuine",
                        carrier_call_id=progress.carrier_call_id)
            return web.Response(status=403, text="attempt token is not genuine\n")
        changed = await campaigns.apply_progress(attempt_id, progress)
        log.info("campaign_callback", carrier=carrier, attempt_id=attempt_id, status=progress.status,
                 answered_by=progress.answered_by, carrier_call_id=progress.carrier_call_id, applied=changed)
        return web.Response(status=204)
    return callback
