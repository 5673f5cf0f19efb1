"""The browser softphone (the console's /console/phone page) as a carrier of its own.

The page opens ``/console/phone/stream`` with the console's session cookie (voicebot/console/auth.py) from one of
our own pages (another Origin is refused), and opens the call with one JSON text message::

    {"type": "start", "rate": 16000, "persona": "support-en", "engine": "auto"}

``rate`` is 16000 or 24000 (the page's AudioContext runs at it; anything else is refused with a close reason
that says so); ``persona`` (a dialplan persona by name; absent: the default) and ``engine`` (realtime, chain or
auto; absent: the persona's own) may also come in the URL's query. Then, both ways, BINARY frames are 16-bit
signed little-endian mono PCM at that rate, and TEXT frames are JSON control:

page → server   ``{"type":"mark","name":…}`` once the audio sent before the mark has PLAYED (a mark dropped by
                a clear is not echoed: that audio was never heard); ``{"type":"hangup"}``.
server → page   ``{"type":"mark","name":…}``; ``{"type":"clear"}`` (drop what has not played); ``{"type":
                "hangup"}``; ``{"type":"event","event":{…}}``: the call's transcript records as they happen
                (call_start, turn, turn_cut, barge_in, tool, turn_latency, engine_switch, call_end, …).

Marks make the page a carrier like the phone ones: the playout knows what the user heard, and a barge-in
truncates the model there (design.md invariants 2 and 3).
"""

from __future__ import annotations

import json

from aiohttp import web

from ..api.auth import TOKEN_ENV
from ..console import auth as console_auth
from ..dialplan import ENGINES
from .base import CarrierEvent, FatalProtocolError, MarkPlayed, MediaRoute, ProtocolError, Stopped, require
from .l16 import L16Session

MEDIA_PATH = "/console/phone/stream"
RATES = (16000, 24000)


class BrowserSession(L16Session):
    carrier = "browser"
    opening_name = "start message"
    max_chunk_ms = None          # the page's worklet queues audio of any length

    def opening(self, msg: dict) -> list[CarrierEvent]:
        if msg.get("type") != "start":
            raise ProtocolError(f"first message must be type 'start', got type {msg.get('type')!r}")
        rate = msg.get("rate")
        if type(rate) is not int or rate not in RATES:
            # The close reason the page shows: short and plain (it has 123 bytes), whatever was sent.
            shown = str(rate)[:12] if type(rate) in (int, float) else "(not a number)"
            raise FatalProtocolError(f"start message: sample rate {rate!r} is not offered (16000 or 24000)",
                                     told=f"sample rate {shown} not offered: use 16000 or 24000")
        params = {key: value for key, value in self.query.items() if key in ("persona", "engine")}
        for key in ("persona", "engine"):
            if key in msg:
                params[key] = require(msg, key, str, "start message")
        engine = params.get("engine") or None
        if engine is not None and engine not in ENGINES:
            raise FatalProtocolError(f"start message: engine {engine[:40]!r} is not one of {', '.join(ENGINES)}",
                                     told=f"engine must be one of {', '.join(ENGINES)}")
        events = self.begin(call_id=None, params=params, rate=rate)
        events[0].meta.engine = engine
        return events

    def control(self, msg: dict) -> list[CarrierEvent]:
        kind = msg.get("type")
        if kind == "mark":
            return [MarkPlayed(require(msg, "name", str, "mark"))]
        if kind == "hangup":
            return [Stopped("the caller hung up")]
        if kind == "start":
            raise ProtocolError("second start message on one stream ignored")
        raise ProtocolError(f"unknown message type {kind!r}" if kind is not None
                            else f"message without a 'type': {str(msg)[:60]}")

    def send_mark(self, name: str) -> None:
        self.send_json({"type": "mark", "name": name})

    def send_clear(self) -> None:
        self.send_json({"type": "clear"})

    def send_hangup(self) -> None:
        self.send_json({"type": "hangup"})

    def call_started(self, call) -> None:
        call.transcript_file.listeners.append(self._forward)

    def _forward(self, record: dict) -> None:
        self.send_text(json.dumps({"type": "event", "event": record}, ensure_ascii=False, separators=(",", ":"),
                                  default=str))


class BrowserRoute(MediaRoute):
    """Only a signed-in console user, from one of this server's own pages (a browser sends the cookie to
    WebSockets of any page that opens one: the Origin is what tells our page from another site's)."""

    carrier = "browser"
    path = MEDIA_PATH
    session_cls = BrowserSession
    auth_required = True

    def auth_problem(self, request: web.Request) -> str | None:
        if console_auth.admin_token() is None:
            return f"{TOKEN_ENV} is not set, so the console is off"
        if not console_auth.same_origin(request):
            return f"Origin {request.headers.get('Origin', '')[:80]!r} is not this server"
        if not console_auth.signed_in(request):
            return "no console session cookie (sign in at /console/login)"
        return None


add_routes = BrowserRoute.add_routes
