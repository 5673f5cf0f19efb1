"""SignalWire cXML (Twilio-compatible): the Twilio webhook and media protocol, parameterised.

See telephony-protocols.md §8. SignalWire speaks Twilio's ``<Connect><Stream>`` and Media Streams
messages unchanged, so this module only changes what differs:

* routes ``/signalwire/voice`` (the number's cXML webhook) and ``/signalwire/media``;
* webhooks are signed Twilio-style (HMAC-SHA1 over URL + sorted form fields) with the project's
  **signing key**, $SIGNALWIRE_SIGNING_KEY, in ``X-SignalWire-Signature`` (compatibility callbacks may
  carry it as ``X-Twilio-Signature``: both are read); the stream is admitted by a signed upgrade or by the
  per-call token our cXML put in its ``<Parameter>``s, exactly as for Twilio;
* ``<Stream codec=…>`` from ``carriers.signalwire.codec`` (PCMU, PCMA, L16@16000h, L16@24000h); the
  session decodes whatever the ``start`` message's ``mediaFormat`` then says, through ``WireCodec``.
"""

from __future__ import annotations

import os
from xml.sax.saxutils import quoteattr

from aiohttp import web
from multidict import CIMultiDict

from .base import Started, read_carrier_options
from .twilio import TwilioRoutes, TwilioSession
from .twilio_auth import StreamTokens, stream_token_secret, validate_signature

VOICE_PATH = "/signalwire/voice"
MEDIA_PATH = "/signalwire/media"
KEY_ENV = "SIGNALWIRE_SIGNING_KEY"
SIGNATURE_HEADER = "X-SignalWire-Signature"
TWILIO_SIGNATURE_HEADER = "X-Twilio-Signature"
CODECS = ("PCMU", "PCMA", "L16@16000h", "L16@24000h")


class SignalWireSession(TwilioSession):
    carrier = "signalwire"

    def __init__(self, send_text, send_bytes, *, options, **twilio) -> None:
        super().__init__(send_text, send_bytes, **twilio)
        self.fallback_persona = options.persona

    def handle_text(self, text: str):
        events = super().handle_text(text)
        for event in events:
            if isinstance(event, Started):    # Twilio's start names its own carrier
                event.meta.carrier = self.carrier
        return events


class SignalWireRoutes(TwilioRoutes):
    def __init__(self, services, *, options, signing_key: str | None, codec: str, token_ttl_s: float) -> None:
        super().__init__(services)
        self.options = options
        self.signing_key = signing_key
        self.codec = codec
        self.tokens = StreamTokens(stream_token_secret(), ttl_s=token_ttl_s)
        self.stream_url = services.settings.public_ws_url + MEDIA_PATH

    def _signature_ok(self, url: str, params, signature: str | None) -> str | None:
        if not self.options.auth:
            return None
        if not self.signing_key:
            return f"{KEY_ENV} is not set, so no signature can be checked"
        if validate_signature(self.signing_key, url, params, signature):
            return None
        return f"{SIGNATURE_HEADER} does not match" if signature else f"{SIGNATURE_HEADER} header missing"

    async def voice(self, request: web.Request) -> web.Response:
        signature = request.headers.get(SIGNATURE_HEADER)
        if signature is not None:          # Twilio's handler reads the Twilio name of the header
            headers = CIMultiDict(request.headers)
            headers[TWILIO_SIGNATURE_HEADER] = signature
            request = request.clone(headers=headers)
        response = await super().voice(request)
        if self.codec != "PCMU" and response.text and "<Stream " in response.text:
            response.text = response.text.replace("<Stream ", f"<Stream codec={quoteattr(self.codec)} ", 1)
        return response

    async def media(self, request: web.Request) -> web.StreamResponse:
        signature = request.headers.get(SIGNATURE_HEADER) or request.headers.get(TWILIO_SIGNATURE_HEADER)
        upgrade_signed = self._signature_ok(self.stream_url, {}, signature) is None
        return await self.services.answer.websocket(request, SignalWireSession, tokens=self.tokens,
                                                    upgrade_signed=upgrade_signed, options=self.options)


def add_routes(app: web.Application, services) -> None:
    fields = services.settings.carrier_fields("signalwire")
    options = read_carrier_options(fields, services.dialplan)
    codec = fields.get("codec", str, "PCMU", choices=CODECS)
    token_ttl_s = fields.get("stream_token_ttl_s", float, 60.0, minimum=1.0)
    fields.reject_unknown()
    if not options.enabled:
        return
    routes = SignalWireRoutes(services, options=options, signing_key=os.environ.get(KEY_ENV) or None, codec=codec,
                              token_ttl_s=token_ttl_s)
    app.router.add_post(VOICE_PATH, routes.voice)
    app.router.add_get(MEDIA_PATH, routes.media)
