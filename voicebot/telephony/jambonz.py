"""jambonz ``listen`` with bidirectional streaming audio (``telephony-protocols.md`` §5).

The application's verb points jambonz at us, with HTTP Basic credentials and streaming playback on at the
same rate as the input::

    {"verb": "listen", "url": "wss://bot.example.com/jambonz/media", "sampleRate": 16000, "passDtmf": true,
     "wsAuth": {"username": "voicebot", "password": "<JAMBONZ_WS_PASSWORD>"},
     "bidirectionalAudio": {"enabled": true, "streaming": true, "sampleRate": 16000},
     "metadata": {"persona": "support-en"}}

jambonz connects with subprotocol ``audio.jambonz.org``, sends the call's attributes (``callSid``, ``from``,
``to``, …, ``sampleRate``, ``mixType`` and our ``metadata``) as one JSON text frame, then binary L16. We play
by sending binary L16; ``{"type":"killAudio"}`` flushes jambonz's playback buffer; ``{"type":"mark"}`` is
answered with ``"event":"playout"`` once reached or ``"event":"cleared"`` when a killAudio dropped it —
only ``playout`` means the caller heard the audio before it.
"""

from __future__ import annotations

from .base import BasicAuthRoute, CarrierEvent, MarkPlayed, ProtocolError, dtmf, require
from .l16 import L16Session, call_params, parse_rate

MEDIA_PATH = "/jambonz/media"
SUBPROTOCOL = "audio.jambonz.org"
PASSWORD_ENV = "JAMBONZ_WS_PASSWORD"


class JambonzSession(L16Session):
    """jambonz's listen protocol; FreeSWITCH's mod_audio_fork (jambonz build) speaks the same control."""

    carrier = "jambonz"
    opening_name = "call attributes"

    def opening(self, msg: dict) -> list[CarrierEvent]:
        rate = parse_rate(msg.get("sampleRate", 8000), "call attributes")
        bidirectional = msg.get("bidirectionalAudio")
        playback_rate = (parse_rate(bidirectional["sampleRate"], "bidirectionalAudio")
                         if isinstance(bidirectional, dict) and "sampleRate" in bidirectional else rate)
        self.channels = 2 if msg.get("mixType") == "stereo" else 1
        return self.begin(call_id=require(msg, "callSid", str, "call attributes"), params=call_params(msg, self.query),
                          rate=rate, playback_rate=playback_rate)

    def control(self, msg: dict) -> list[CarrierEvent]:
        kind = msg.get("type")
        if kind == "mark":
            data = require(msg, "data", dict, "mark")
            name = require(data, "name", str, "mark.data")
            event = data.get("event")
            if event == "playout":
                return [MarkPlayed(name)]
            if event == "cleared":
                return []        # dropped by killAudio: the audio before it was not heard
            raise ProtocolError(f"mark {name!r}: event {event!r} is neither 'playout' nor 'cleared'")
        if msg.get("event") == "dtmf":
            return [dtmf(msg.get("dtmf"), "dtmf")]
        raise ProtocolError(f"unknown message type {kind!r}" if kind is not None
                            else f"message with neither 'type' nor a known 'event': {str(msg)[:60]}")

    def send_mark(self, name: str) -> None:
        self.send_json({"type": "mark", "data": {"name": name}})

    def send_clear(self) -> None:
        self.send_json({"type": "killAudio"})

    def send_hangup(self) -> None:
        self.send_json({"type": "disconnect"})


class JambonzRoute(BasicAuthRoute):
    carrier = "jambonz"
    path = MEDIA_PATH
    session_cls = JambonzSession
    protocols = (SUBPROTOCOL,)
    password_env = PASSWORD_ENV


add_routes = JambonzRoute.add_routes
