"""Asterisk chan_websocket (``telephony-protocols.md`` §6a): binary raw-codec media, TEXT control.

Asterisk dials us from a ``websocket_client.conf`` client (``uri=wss://bot.example.com/asterisk/media``,
``protocols=media``, ``username=asterisk``, ``password=<ASTERISK_WS_PASSWORD>``), e.g.
``Dial(WebSocket/voicebot/c(ulaw)f(json)v(to=${URIENCODE(${EXTEN})},from=${URIENCODE(${CALLERID(num)})}))``.
The ``v()`` parameters arrive as our URL query: ``to``/``from`` choose the persona by number, ``persona``
by name; without them ``carriers.asterisk.persona`` or the default persona answers.

Control is plain text (``MEDIA_START connection_id:… format:ulaw …``) or JSON (``f(json)``); we answer in
the format ``MEDIA_START`` came in. Media: ulaw/alaw/slin/slin16/slin24, sent in whole ``optimal_frame_size``
units; ``FLUSH_MEDIA`` drops Asterisk's queue (barge-in); ``MARK_MEDIA`` comes back as
``MEDIA_MARK_PROCESSED`` when reached; ``MEDIA_XOFF`` holds our media and marks here, in order, until
``MEDIA_XON`` (nothing is dropped, and held marks keep "heard" from running ahead); ``HANGUP`` ends the call.
"""

from __future__ import annotations

import json

import numpy as np
import structlog

from ..audio.codecs import UnsupportedCodec, WireCodec
from ..wsserver import MAX_BUFFERED_BYTES
from .base import (Audio, BasicAuthRoute, CallMeta, CarrierEvent, CarrierOptions, CarrierSession,
                   FatalProtocolError, MarkPlayed, ProtocolError, Started, decode_audio, dtmf,
                   parse_json_object)

MEDIA_PATH = "/asterisk/media"
SUBPROTOCOL = "media"
PASSWORD_ENV = "ASTERISK_WS_PASSWORD"

# Asterisk format name → (our codec name, rate)
FORMATS = {"ulaw": ("pcmu", 8000), "alaw": ("pcma", 8000), "slin": ("l16", 8000), "slin16": ("l16", 16000),
           "slin24": ("l16", 24000)}
IGNORED_EVENTS = {"STATUS", "MEDIA_BUFFERING_COMPLETED", "QUEUE_DRAINED"}
# What MEDIA_XOFF may make us hold: as much as an unread WebSocket may (wsserver), 32 s of ulaw or 5 s of slin24
# beyond Asterisk's own full queue. Past it Asterisk is not playing any more: later media and marks are dropped
# (counted, logged once) until MEDIA_XON.
XOFF_HELD_MAX_BYTES = MAX_BUFFERED_BYTES

log = structlog.get_logger("voicebot.telephony")


def parse_plain(text: str) -> tuple[str, dict[str, str], list[str]]:
    """``EVENT key:value … bare`` → (event, fields, bare words)."""
    name, *words = text.split()
    fields = dict(w.split(":", 1) for w in words if ":" in w)
    return name, fields, [w for w in words if ":" not in w]


class AsteriskSession(CarrierSession):
    carrier = "asterisk"

    def __init__(self, send_text, send_bytes, *, options: CarrierOptions = CarrierOptions(),
                 query=None) -> None:
        super().__init__(send_text, send_bytes)
        self.fallback_persona = options.persona
        self.query = {str(k): str(v) for k, v in (query or {}).items()}
        self.codec: WireCodec | None = None
        self.frame_bytes = 0
        self.json = False
        self.xoff = False
        self._held: list[str | bytes] = []   # what MEDIA_XOFF keeps from Asterisk, in order
        self._held_bytes = 0
        self.xoff_dropped = 0                # media and marks dropped past XOFF_HELD_MAX_BYTES
        self._partial = b""                  # media not yet a whole optimal frame

    # -- Asterisk → us ----------------------------------------------------------------------------
    def handle_text(self, text: str) -> list[CarrierEvent]:
        if text.lstrip().startswith("{"):
            msg = parse_json_object(text)
            name, bare = msg.get("event"), []
            if not isinstance(name, str):
                raise ProtocolError(f"JSON event without an 'event' name: {text[:60]!r}")
        elif text.strip():
            name, msg, bare = parse_plain(text)
        else:
            raise ProtocolError("empty text frame")
        if name == "MEDIA_START":
            return self._media_start(msg, json_format=text.lstrip().startswith("{"))
        if self.codec is None:
            raise ProtocolError(f"{name} before MEDIA_START")
        if name == "MEDIA_MARK_PROCESSED":
            mark = msg.get("correlation_id") or (bare[0] if bare else None)
            if not isinstance(mark, str):
                raise ProtocolError("MEDIA_MARK_PROCESSED without a correlation_id")
            return [MarkPlayed(mark)]
        if name == "DTMF_END":
            return [dtmf(msg.get("digit"), "DTMF_END")]
        if name == "MEDIA_XOFF":
            self.xoff = True
            return []
        if name == "MEDIA_XON":
            self.xoff = False
            held, self._held, self._held_bytes = self._held, [], 0
            for item in held:
                self._send_now(item)
            return []
        if name in IGNORED_EVENTS:
            return []
        raise ProtocolError(f"unknown event {name!r}")

    def _media_start(self, msg: dict, *, json_format: bool) -> list[CarrierEvent]:
        if self.codec is not None:
            raise ProtocolError("second MEDIA_START on one stream ignored")
        fmt = msg.get("format")
        if not isinstance(fmt, str) or fmt not in FORMATS:
            raise FatalProtocolError(f"MEDIA_START: format {fmt!r} is not supported "
                                     f"(use c({'|'.join(FORMATS)}) in the dial string)")
        try:
            self.frame_bytes = int(msg.get("optimal_frame_size", 0))
            codec = WireCodec(*FORMATS[fmt])
        except (TypeError, ValueError, OverflowError, UnsupportedCodec) as exc:
            raise FatalProtocolError(f"MEDIA_START: {exc}") from None
        if self.frame_bytes <= 0:
            raise FatalProtocolError(f"MEDIA_START: optimal_frame_size {msg.get('optimal_frame_size')!r} "
                                     "is not a positive number")
        self.codec, self.json = codec, json_format
        variables = msg.get("channel_variables") if isinstance(msg.get("channel_variables"), dict) else {}
        params = {**{str(k): str(v) for k, v in variables.items()}, **self.query}
        call_id = msg.get("channel_id") or msg.get("connection_id") or "asterisk"
        connection_id = msg.get("connection_id")
        return [Started(CallMeta(carrier="asterisk", call_id=str(call_id),
                                 stream_id=connection_id if isinstance(connection_id, str) else None,
                                 from_number=params.get("from") or None, to_number=params.get("to") or None,
                                 params=params, persona=params.get("persona") or None))]

    def handle_bytes(self, data: bytes) -> list[CarrierEvent]:
        if self.codec is None:
            raise ProtocolError(f"binary media of {len(data)} bytes before MEDIA_START")
        return [Audio(decode_audio(self.codec, data, "binary media"))]

    # -- us → Asterisk ----------------------------------------------------------------------------
    def _command(self, command: str, correlation_id: str | None = None) -> str:
        if self.json:
            body = {"command": command} if correlation_id is None else {"command": command,
                                                                         "correlation_id": correlation_id}
            return json.dumps(body, separators=(",", ":"))
        return command if correlation_id is None else f"{command} {correlation_id}"

    def _send_now(self, item: str | bytes) -> None:
        (self.send_text if isinstance(item, str) else self.send_bytes)(item)

    def _send_in_order(self, item: str | bytes) -> None:
        """Media and marks wait while Asterisk said XOFF, so marks stay behind the media they follow."""
        if self.xoff:
            if self._held_bytes + len(item) > XOFF_HELD_MAX_BYTES:
                if not self.xoff_dropped:
                    log.warning("asterisk_xoff_overflow", carrier=self.carrier, held_bytes=self._held_bytes,
                                problem="MEDIA_XOFF for too long: bot audio past this is dropped until MEDIA_XON")
                self.xoff_dropped += 1
                return
            self._held.append(item)
            self._held_bytes += len(item)
        else:
            self._send_now(item)

    def send_audio(self, frame: np.ndarray) -> None:
        data = self._partial + self.codec.encode(frame)
        whole = len(data) - len(data) % self.frame_bytes    # Asterisk drops what is not a whole frame
        self._partial = data[whole:]
        if whole:
            self._send_in_order(data[:whole])

    def send_mark(self, name: str) -> None:
        self._send_in_order(self._command("MARK_MEDIA", name))

    def send_clear(self) -> None:
        self._held.clear()
        self._held_bytes = 0
        self._partial = b""
        self.xoff = False     # the flush empties Asterisk's queue: whatever comes next fits
        self.send_text(self._command("FLUSH_MEDIA"))

    def send_hangup(self) -> None:
        self.send_text(self._command("HANGUP"))


class AsteriskRoute(BasicAuthRoute):
    carrier = "asterisk"
    path = MEDIA_PATH
    session_cls = AsteriskSession
    protocols = (SUBPROTOCOL,)
    default_username = "asterisk"
    password_env = PASSWORD_ENV


add_routes = AsteriskRoute.add_routes
