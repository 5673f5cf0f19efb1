"""Vonage Voice API WebSockets: binary L16 in exact 20 ms frames, JSON text events (``telephony-protocols.md`` §4).

Answer the call with an NCCO that connects it to us, passing the numbers as headers (they arrive flattened
into ``websocket:connected``) and our token as the handshake ``Authorization`` header::

    [{"action": "connect", "endpoint": [{"type": "websocket", "uri": "wss://bot.example.com/vonage/media",
      "content-type": "audio/l16;rate=16000",
      "headers": {"to": "+15551230001", "from": "+15557654321", "uuid": "<call uuid>"},
      "authorization": {"type": "custom", "value": "Bearer <VONAGE_WS_TOKEN>"}}]}]

``headers`` may also carry ``persona`` to choose a persona by name. Audio goes back as binary frames of
exactly 20 ms (320/640/960 bytes at 8/16/24 kHz); ``{"action":"clear"}`` empties Vonage's buffer (answered
by ``websocket:cleared``), and ``{"action":"notify"}`` is our mark: Vonage answers ``websocket:notify`` with
the same payload once everything sent before it has played.
"""

from __future__ import annotations

import os

from aiohttp import web

from .base import CarrierEvent, MarkPlayed, MediaRoute, ProtocolError, dtmf, require, secret_matches
from .l16 import L16Session, call_params, parse_rate

MEDIA_PATH = "/vonage/media"
TOKEN_ENV = "VONAGE_WS_TOKEN"


class VonageSession(L16Session):
    carrier = "vonage"
    opening_name = "websocket:connected"

    def opening(self, msg: dict) -> list[CarrierEvent]:
        if msg.get("event") != "websocket:connected":
            raise ProtocolError(f"first message must be websocket:connected, got event {msg.get('event')!r}")
        rate = parse_rate(require(msg, "content-type", str, "websocket:connected"), "websocket:connected")
        params = call_params(msg, self.query)
        call_id = params.get("uuid") or params.get("call_uuid") or params.get("conversation_uuid")
        return self.begin(call_id=call_id, params=params, rate=rate)

    def control(self, msg: dict) -> list[CarrierEvent]:
        event = msg.get("event")
        if event == "websocket:notify":
            payload = require(msg, "payload", dict, "websocket:notify")
            return [MarkPlayed(require(payload, "mark", str, "websocket:notify.payload"))]
        if event == "websocket:cleared":
            return []
        if event == "websocket:dtmf":
            nested = msg.get("dtmf") if isinstance(msg.get("dtmf"), dict) else {}
            return [dtmf(msg.get("digit", nested.get("digit")), "websocket:dtmf")]
        if event == "websocket:connected":
            raise ProtocolError("second websocket:connected on one stream ignored")
        raise ProtocolError(f"unknown event {event!r}")

    def send_mark(self, name: str) -> None:
        self.send_json({"action": "notify", "payload": {"mark": name}})

    def send_clear(self) -> None:
        self.send_json({"action": "clear"})


class VonageRoute(MediaRoute):
    carrier = "vonage"
    path = MEDIA_PATH
    session_cls = VonageSession

    def configure(self, fields) -> None:
        self.token = os.environ.get(TOKEN_ENV) or None

    def auth_problem(self, request: web.Request) -> str | None:
        if not self.token:
            return f"{TOKEN_ENV} is not set, so no Authorization header can be checked"
        given = request.headers.get("Authorization")
        if given is None:
            return "Authorization header missing"
        scheme, _, value = given.partition(" ")
        if not (secret_matches(given, self.token) or scheme.lower() == "bearer" and secret_matches(value, self.token)):
            return "Authorization header does not match"
        return None


add_routes = VonageRoute.add_routes
