"""Transfer documents: the call-flow XML a carrier fetches from our server to carry out a transfer.

Plivo transfers a live call by fetching new Plivo XML from a URL we give it (``aleg_url``), and SignalWire's
documented call update takes a ``Url`` as well. That URL points at our own server (``settings.public_url``) and
carries a signed, expiring token naming the carrier, the call and the target: nobody else can make the server
emit a transfer document, for another call, or to another target. The token is self-contained, so whichever
worker of ``serve --workers`` the carrier's request reaches can serve it (the key is the stream-token key,
``VOICEBOT_STREAM_SECRET``, the same on every worker).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping

import structlog
from aiohttp import web

from .base import Target, parse_target

log = structlog.get_logger("voicebot.call_control")

ROUTE = "/call-control/{carrier}/transfer/{token}"
TTL_S = 120.0      # the carrier fetches at once; the margin covers its retries
_DOMAIN = b"voicebot transfer document\x00"    # keeps these MACs apart from stream tokens made with the same key
# The call id the carrier names when it fetches: Plivo's CallUUID, SignalWire's (Twilio-style) CallSid.
CALL_ID_PARAMS = ("CallUUID", "CallSid")

Renderer = Callable[[Target], str]


class DocumentRefused(Exception):
    """A transfer-document request we will not answer; the message says why."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TransferDocuments:
    """Issues and checks the URLs of transfer documents."""

    def __init__(self, public_url: str, secret: bytes, ttl_s: float = TTL_S) -> None:
        self.public_url = public_url.rstrip("/")
        self._secret = secret
        self.ttl_s = ttl_s

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, _DOMAIN + payload.encode(), hashlib.sha256).digest())

    def url(self, carrier: str, call_id: str, target: Target, now: float | None = None) -> str:
        expiry = int((time.time() if now is None else now) + self.ttl_s)
        payload = _b64(json.dumps([carrier, call_id, target.value, expiry], separators=(",", ":")).encode())
        return self.public_url + ROUTE.format(carrier=carrier, token=f"{payload}.{self._mac(payload)}")

    def read(self, carrier: str, token: str, now: float | None = None) -> tuple[str, Target]:
        """(call id, target) of a valid token for ``carrier``; DocumentRefused otherwise."""
        payload, _, mac = token.partition(".")
        if not payload or not mac:
            raise DocumentRefused("malformed token")
        if not hmac.compare_digest(self._mac(payload), mac):
            raise DocumentRefused("token signature does not match")
        try:
            signed_carrier, call_id, target, expiry = json.loads(_unb64(payload))
            parsed = parse_target(target)
        except (binascii.Error, ValueError, TypeError):
            raise DocumentRefused("token payload unreadable") from None
        if signed_carrier != carrier:
            raise DocumentRefused(f"token was issued for {signed_carrier}, not {carrier}")
        if not isinstance(expiry, int) or expiry < (time.time() if now is None else now):
            raise DocumentRefused("token expired")
        return call_id, parsed


def add_document_route(app: web.Application, documents: TransferDocuments, renderers: Mapping[str, Renderer]) -> None:
    """Serve ``ROUTE`` (GET and POST, as the carrier's ``…Method`` says) for the carriers in ``renderers``."""

    async def serve(request: web.Request) -> web.Response:
        carrier = request.match_info["carrier"]
        renderer = renderers.get(carrier)
        try:
            if renderer is None:
                raise DocumentRefused(f"no transfer documents for carrier {carrier!r}")
            call_id, target = documents.read(carrier, request.match_info["token"])
            params = await request.post() if request.method == "POST" else request.query
            named = next((str(params[name]) for name in CALL_ID_PARAMS if params.get(name)), None)
            if named is not None and named != call_id:
                raise DocumentRefused(f"request names call {named!r}, the token another call")
        except DocumentRefused as refused:
            log.warning("transfer_document_refused", carrier=carrier, reason=str(refused), peer=request.remote)
            return web.Response(status=403, text=f"{refused}\n")
        log.info("transfer_document_served", carrier=carrier, call_id=call_id, target_kind=target.kind)
        return web.Response(text=renderer(target), content_type="text/xml")

    app.router.add_route("GET", ROUTE, serve)
    app.router.add_route("POST", ROUTE, serve)
