"""Telnyx media streaming (Call Control ``stream_url``, TeXML ``<Stream>``): wire protocol and stream token.

See telephony-protocols.md §2. Telnyx → us: ``connected``, ``start`` (``stream_id`` at the top level;
``from``, ``to``, ``custom_parameters``, ``media_format``), ``media`` (base64 RTP payloads, no header),
``dtmf``, ``mark`` echoes, ``error`` and ``stop``. Telnyx does not promise order: messages are put back
in ``sequence_number`` order here. Us → Telnyx: ``media``, ``mark`` and ``clear`` without a stream id (one
bidirectional stream per call), RTP bidirectional mode (``stream_bidirectional_mode: rtp``). The playback
codec is chosen on the Telnyx side (``stream_bidirectional_codec``/``…_sampling_rate``); it is the
stream's own codec unless ``carriers.telnyx.bidirectional_codec`` says otherwise.

Authentication: the ``stream_auth_token`` given to Telnyx, $TELNYX_STREAM_TOKEN here, comes as the
``x-telnyx-streaming-auth-token`` upgrade header (a wrong one: HTTP 401) and in the ``connected`` frame
(checked at ``start`` when the header was absent: close 1008).

A call we placed carries our attempt token as ``client_state`` (base64, echoed in ``start``): it reaches the call
decoded, as ``meta.params["attempt"]``.
"""

from __future__ import annotations

import base64
import binascii
import os

import structlog
from aiohttp import web

from ..audio.codecs import WireCodec
from ..config import Fields
from .base import CarrierEvent, MediaRoute, ProtocolError, Started, parse_json_object, secret_matches
from .jsonstream import SnakeCaseSession, codec_for

log = structlog.get_logger("voicebot.telnyx")

MEDIA_PATH = "/telnyx/media"
TOKEN_ENV = "TELNYX_STREAM_TOKEN"
TOKEN_HEADER = "x-telnyx-streaming-auth-token"    # also the field of the ``connected`` frame
# RTP carries L16 in network byte order (RFC 3551 §4.5.11); G.711 is bytes either way.
L16_BYTEORDER = "big"
# A missing sequence number is waited for while this many later messages are held (≈ 200 ms of media).
REORDER_WINDOW = 10


def decode_client_state(value: object) -> str | None:
    """The text Telnyx carried as ``client_state`` (base64); None when absent or not base64 of UTF-8."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None


class SequenceOrder:
    """Releases messages in ``sequence_number`` order; gives up on a gap once ``window`` later ones wait."""

    def __init__(self, window: int = REORDER_WINDOW, first: int = 1) -> None:
        self.window = window
        self.next = first
        self._held: dict[int, dict] = {}

    def push(self, seq: int, msg: dict) -> list[dict] | None:
        """The messages now in order, or None when ``seq`` is older than what was released (late/repeated)."""
        if seq < self.next or seq in self._held:
            return None
        self._held[seq] = msg
        released = []
        while self._held:
            if self.next in self._held:
                released.append(self._held.pop(self.next))
                self.next += 1
            elif len(self._held) > self.window:
                self.next = min(self._held)    # the missing message is lost: go on without it
            else:
                break
        return released

    def drain(self) -> list[dict]:
        """Everything held, in order (the stream is ending)."""
        return [self._held.pop(seq) for seq in sorted(self._held)]


class TelnyxSession(SnakeCaseSession):
    carrier = "telnyx"
    stream_key = "stream_id"
    call_key = "call_control_id"
    outbound_stream_key = None
    handlers = {**SnakeCaseSession.handlers, "error": "on_error"}
    in_band_hang_up = False     # a stopped stream leaves the call up: hang-up is a Call Control command
    in_band_hang_up_missing = "ending a Telnyx stream leaves the call up; hang-up needs TELNYX_API_KEY (Call Control)"

    def __init__(self, send_text, send_bytes, *, expected_token: str | None,
                 playback: tuple[str, int] | None = None, **common) -> None:
        super().__init__(send_text, send_bytes, **common)
        self._expected_token = expected_token     # None: nothing (more) to check
        self._connected_token: str | None = None
        self._playback = playback
        self._order = SequenceOrder()
        self._carried: list[CarrierEvent] = []   # events released alongside a problem, returned next time

    # -- inbound: reorder, then dispatch ------------------------------------------------------------
    def handle_text(self, text: str) -> list[CarrierEvent]:
        events, self._carried = self._carried, []
        problems: list[str] = []
        try:
            events += self._receive(parse_json_object(text), problems)
        except ProtocolError as exc:
            problems.insert(0, str(exc))
        if problems:
            self._carried = events    # the shared loop drops events when we raise: keep them for the next frame
            raise ProtocolError("; ".join(problems))
        return events

    def _receive(self, msg: dict, problems: list[str]) -> list[CarrierEvent]:
        seq = msg.get("sequence_number")
        if seq is None:                        # connected, error: not numbered
            return self.dispatch(msg)
        try:
            number = int(seq)
        except (TypeError, ValueError, OverflowError):
            raise ProtocolError(f"{msg.get('event')}: sequence_number {seq!r} is not a number") from None
        released = self._order.push(number, msg)
        if released is None:
            if msg.get("event") == "media":
                raise ProtocolError(f"media sequence_number {number} came after {self._order.next - 1} "
                                    "had been played on (late or repeated); dropped")
            released = [msg]                   # late control messages still count
        if msg.get("event") == "stop":
            released += self._order.drain()
        events: list[CarrierEvent] = []
        for message in released:
            try:
                events += self.dispatch(message)
            except ProtocolError as exc:
                problems.append(str(exc))
        return events

    def on_connected(self, msg: dict) -> list[CarrierEvent]:
        token = msg.get(TOKEN_HEADER)
        self._connected_token = token if isinstance(token, str) else None
        return []

    def on_start(self, msg: dict) -> list[CarrierEvent]:
        events = super().on_start(msg)
        attempt = decode_client_state(msg["start"].get("client_state"))
        if attempt is not None:
            for event in events:
                if isinstance(event, Started):
                    event.meta.params["attempt"] = attempt
        return events

    def on_error(self, msg: dict) -> list[CarrierEvent]:
        payload = msg.get("payload") if isinstance(msg.get("payload"), dict) else {}
        log.warning("telnyx_reported_error", stream_id=self.stream_id, code=payload.get("code"),
                    title=payload.get("title"), detail=payload.get("detail"))
        return []

    def codecs(self, media_format: dict) -> tuple[WireCodec, WireCodec | None]:
        inbound = codec_for(media_format.get("encoding"), media_format.get("sample_rate", 8000),
                            "start.media_format", byteorder=L16_BYTEORDER)
        if self._playback is None:
            return inbound, None
        return inbound, codec_for(*self._playback, "carriers.telnyx.bidirectional_codec", byteorder=L16_BYTEORDER)

    def authorize(self, meta) -> str | None:
        if self._expected_token is None or secret_matches(self._connected_token, self._expected_token):
            return None
        return ("stream auth token missing or wrong (no x-telnyx-streaming-auth-token header, and the connected "
                "frame's token does not match)")


class TelnyxRoute(MediaRoute):
    carrier = "telnyx"
    path = MEDIA_PATH
    session_cls = TelnyxSession

    def configure(self, fields: Fields) -> None:
        codec = fields.get("bidirectional_codec", str, None, choices=("PCMU", "PCMA", "L16"))
        rate = fields.get("bidirectional_sampling_rate", int, 8000, choices=(8000, 16000, 24000))
        if codec is not None and codec != "L16" and rate != 8000:
            raise fields.error("bidirectional_sampling_rate", f"{codec} runs at 8000 Hz, not {rate}")
        self.playback = None if codec is None else (codec, rate)
        self.token = os.environ.get(TOKEN_ENV) or None

    def auth_problem(self, request: web.Request) -> str | None:
        if self.token is None:
            return f"{TOKEN_ENV} is not set, so no stream token can be checked"
        given = request.headers.get(TOKEN_HEADER)
        if given is not None and not secret_matches(given, self.token):
            return f"{TOKEN_HEADER} does not match"
        return None       # absent: the connected frame must carry it (checked at start)

    def session_kwargs(self, request: web.Request) -> dict:
        header_checked = TOKEN_HEADER in request.headers
        return {**super().session_kwargs(request), "playback": self.playback,
                "expected_token": self.token if self.options.auth and not header_checked else None}


add_routes = TelnyxRoute.add_routes
