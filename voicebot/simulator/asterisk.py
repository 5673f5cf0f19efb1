"""Asterisk's side of a chan_websocket call (``telephony-protocols.md`` §6a), Asterisk dialing out to us.

Asterisk connects with subprotocol ``media`` and the ``websocket_client.conf`` credentials as HTTP Basic,
the dial string's ``v()`` parameters as URL query, sends ``MEDIA_START`` (plain text, or JSON with
``f(json)``), then one binary frame of raw codec audio every 20 ms, and ``DTMF_END`` (``digit``) per key
pressed. What the server sends is checked as
chan_websocket would: binary media in whole ``optimal_frame_size`` units (a remainder is dropped) and at
most 65500 bytes, TEXT commands in the call's control format only (``FLUSH_MEDIA``, ``MARK_MEDIA``,
``HANGUP``, …). Its frame queue reports ``MEDIA_XOFF`` at ``xoff_frames`` and ``MEDIA_XON`` below
``xon_frames``; media arriving after ``MEDIA_XOFF`` had time to reach the server is dropped and reported.
``MARK_MEDIA`` is answered with ``MEDIA_MARK_PROCESSED`` when the audio before it has played; a
``FLUSH_MEDIA`` drops queued audio and queued marks.
"""

from __future__ import annotations

import asyncio
import os

from voicebot.audio.codecs import WireCodec
from voicebot.simulator.caller import (CallResult, ClearPlayback, Message, ProtocolViolation, QueueMark,
                                       ServerEvent, Step)
from voicebot.simulator.l16 import AUTO, L16Protocol, basic_auth, dumps, new_uuid, simulate

MAX_MESSAGE_BYTES = 65500
FORMATS = {"ulaw": ("pcmu", 8000), "alaw": ("pcma", 8000), "slin": ("l16", 8000), "slin16": ("l16", 16000)}
COMMANDS = {"ANSWER", "HANGUP", "START_MEDIA_BUFFERING", "STOP_MEDIA_BUFFERING", "FLUSH_MEDIA", "PAUSE_MEDIA",
            "CONTINUE_MEDIA", "MARK_MEDIA", "GET_STATUS", "REPORT_QUEUE_DRAINED", "SET_MEDIA_DIRECTION"}
XOFF_GRACE_S = 0.03     # media already on its way when MEDIA_XOFF was sent is still taken


class AsteriskProtocol(L16Protocol):
    name = "asterisk"
    path = "/asterisk/media"
    subprotocol = "media"

    def __init__(self, base_url: str, *, to: str | None, from_: str = "+15005550006", format: str = "ulaw",
                 control: str = "json", username: str = "asterisk", password: str | None = AUTO,
                 uri_params: dict[str, str] | None = None, xoff_frames: int = 900, xon_frames: int = 800,
                 call_id: str | None = None) -> None:
        if password == AUTO:
            password = os.environ.get("ASTERISK_WS_PASSWORD")
        if control not in ("json", "plain-text"):
            raise ValueError(f"control is 'json' or 'plain-text', not {control!r}")
        query = {k: v for k, v in (("to", to), ("from", from_)) if v} if uri_params is None else uri_params
        super().__init__(base_url, headers={"Authorization": basic_auth(username, password)} if password else {},
                         query=query, codec=WireCodec(*FORMATS[format]), call_id=call_id)
        self.format, self.json = format, control == "json"
        self.connection_id = new_uuid()
        self.hangup_at: float | None = None     # loop time the server's HANGUP command arrived
        self.xoff_samples, self.xon_samples = xoff_frames * 160, xon_frames * 160
        self.xoff_since: float | None = None
        self.dropped_frames = 0

    def _event(self, event: str, **fields) -> str:
        if self.json:
            return dumps({"event": event, "channel_id": self.call_uuid, **fields})
        return " ".join([event, *(f"{k}:{v}" for k, v in fields.items())])

    def opening_messages(self) -> list[Message]:
        fields = {"connection_id": self.connection_id, "channel": f"WebSocket/voicebot/0x{self.call_uuid[:8]}",
                  "channel_id": self.call_uuid, "format": self.format,
                  "optimal_frame_size": self.codec.frame_bytes, "ptime": 20}
        if self.json:
            fields["channel_variables"] = {"MEDIA_WEBSOCKET_CONNECTION_ID": self.connection_id,
                                           "MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE": str(self.codec.frame_bytes)}
            return [dumps({"event": "MEDIA_START", **fields})]
        return [" ".join(["MEDIA_START", *(f"{k}:{v}" for k, v in fields.items())])]

    def check_audio(self, data: bytes) -> None:
        if len(data) > MAX_MESSAGE_BYTES:
            raise ProtocolViolation(f"binary frame of {len(data)} bytes: over {MAX_MESSAGE_BYTES}, Asterisk hangs up")
        if len(data) % self.codec.frame_bytes:
            raise ProtocolViolation(f"binary frame of {len(data)} bytes is not a multiple of optimal_frame_size "
                                    f"{self.codec.frame_bytes}: the remainder is dropped")
        if self.xoff_since is not None and asyncio.get_running_loop().time() - self.xoff_since > XOFF_GRACE_S:
            self.dropped_frames += len(data) // self.codec.frame_bytes
            raise ProtocolViolation(f"binary frame of {len(data)} bytes sent after MEDIA_XOFF: dropped")

    def playback_level(self, buffered_samples: int) -> list[Message]:
        if self.xoff_since is None and buffered_samples >= self.xoff_samples:
            self.xoff_since = asyncio.get_running_loop().time()
            return [self._event("MEDIA_XOFF")]
        if self.xoff_since is not None and buffered_samples < self.xon_samples:
            self.xoff_since = None
            return [self._event("MEDIA_XON")]
        return []

    def control(self, text: str, excerpt: str) -> list[ServerEvent]:
        if self.json:
            obj = self.json_object(text, excerpt)
            command, correlation_id = obj.get("command"), obj.get("correlation_id")
            extra = sorted(set(obj) - {"command", "correlation_id", "direction"})
            if extra:
                raise ProtocolViolation(f"command with unknown fields {extra}: {excerpt!r}")
        else:
            if text.lstrip().startswith("{"):
                raise ProtocolViolation(f"JSON command on a plain-text control channel: {excerpt!r}")
            command, *args = text.split()
            correlation_id = args[0] if args else None
        if command not in COMMANDS:
            raise ProtocolViolation(f"unknown command {command!r} (commands are case-sensitive): {excerpt!r}")
        if command == "FLUSH_MEDIA":
            return [ClearPlayback()]
        if command == "MARK_MEDIA":
            return [QueueMark(correlation_id or "")]
        if command == "HANGUP":
            self.hangup_at = asyncio.get_running_loop().time()   # then the server closes the socket
        return []   # the others change nothing we model

    carries_dtmf = True

    def encode_dtmf(self, digit: str, duration_ms: int) -> list[Message]:
        return [self._event("DTMF_END", digit=digit)]

    def mark_played(self, name: str, cleared: bool) -> list[Message]:
        if cleared:
            return []      # FLUSH_MEDIA drops queued marks with the media
        return [self._event("MEDIA_MARK_PROCESSED", correlation_id=name)]


async def simulate_call(base_url: str, *, to: str | None, from_: str = "+15005550006", script: list[Step],
                        max_duration_s: float = 30.0, **options) -> CallResult:
    """One simulated chan_websocket call from Asterisk to our server. Options: ``format`` (ulaw, alaw, slin,
    slin16), ``control`` ("json" or "plain-text"), ``password`` (``AUTO`` = ``$ASTERISK_WS_PASSWORD``, None
    sends no credentials), ``uri_params`` (the dial string's ``v()``; default ``to``/``from``),
    ``xoff_frames``/``xon_frames`` (queue watermarks); the rest go to :class:`SimulatedCall`."""
    return await simulate(AsteriskProtocol, base_url, script, max_duration_s, {"to": to, "from_": from_, **options})
