"""What the JSON media-stream carriers (Telnyx, Exotel, Plivo) share: text frames with an ``event``
field, base64 audio through :class:`~voicebot.audio.codecs.WireCodec`, and the persona a call asks for.

A carrier module subclasses :class:`JsonStreamSession` (Plivo, with its own verbs) or
:class:`SnakeCaseSession` (Twilio's event set in snake_case: Telnyx, Exotel) and names its fields; its
route is a ``base.MediaRoute`` that checks the carrier's credentials on the upgrade request.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping

import numpy as np

from ..audio.codecs import UnsupportedCodec, WireCodec
from .base import (Audio, CallMeta, CarrierEvent, CarrierOptions, CarrierSession, Dtmf, MarkPlayed, ProtocolError,
                   Started, Stopped, decode_audio, parse_json_object, require)


def codec_for(encoding: object, rate: object, where: str, *, byteorder: str = "little") -> WireCodec:
    """The call's codec from the carrier's stated format, or a ProtocolError naming what is unusable."""
    try:
        return WireCodec(str(encoding), int(rate), byteorder=byteorder)   # type: ignore[arg-type]
    except (UnsupportedCodec, ValueError, TypeError) as exc:
        raise ProtocolError(f"{where}: unusable audio format {encoding!r} at {rate!r} Hz: {exc}") from None


def decode_base64(payload: str, where: str) -> bytes:
    try:
        return binascii.a2b_base64(payload, strict_mode=True)   # b64decode(validate=True), without its regex
    except (binascii.Error, ValueError, TypeError):
        raise ProtocolError(f"{where}: payload is not valid base64 ({len(payload)} chars)") from None


def compact(obj: dict) -> str:
    return json.dumps(obj, separators=(",", ":"))


def string_params(value: object, where: str) -> dict[str, str]:
    """A carrier's custom-parameter object as str → str (absent: empty)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{where} is not an object")
    return {str(k): str(v) for k, v in value.items()}


class JsonStreamSession(CarrierSession):
    """One JSON media stream. ``handlers`` maps each inbound event name to the method that handles it."""

    handlers: dict[str, str] = {}

    def __init__(self, send_text, send_bytes, *, options: CarrierOptions,
                 query: Mapping[str, str] | None = None) -> None:
        super().__init__(send_text, send_bytes)
        self.options = options
        self.fallback_persona = options.persona
        self.query = dict(query or {})               # the stream URL's query string
        self.codec: WireCodec | None = None           # inbound audio; set by the start message
        self.playback_codec: WireCodec | None = None  # what we send; the same unless the carrier says otherwise
        self.stream_id: str | None = None

    def handle_text(self, text: str) -> list[CarrierEvent]:
        return self.dispatch(parse_json_object(text))

    def dispatch(self, msg: dict) -> list[CarrierEvent]:
        event = msg.get("event")
        handler = self.handlers.get(event) if isinstance(event, str) else None
        if handler is None:
            raise ProtocolError(f"unknown event {event!r}")
        return getattr(self, handler)(msg)

    def begin(self, meta: CallMeta, codec: WireCodec, playback_codec: WireCodec | None = None) -> list[CarrierEvent]:
        """The start message was valid: from now on media can be decoded and sent."""
        if self.codec is not None:
            raise ProtocolError("second start message on one stream ignored")
        self.codec = codec
        self.playback_codec = playback_codec or codec
        self.stream_id = meta.stream_id
        meta.persona = meta.params.get("persona") or None    # a persona asked for by name beats the number
        return [Started(meta)]

    def audio(self, payload: object, where: str) -> list[CarrierEvent]:
        """Caller audio from one base64 payload."""
        if self.codec is None:
            raise ProtocolError(f"{where}: media before start")
        if not isinstance(payload, str):
            raise ProtocolError(f"{where}: field 'payload' missing or not a str")
        return self.decoded(decode_base64(payload, where), where)

    def decoded(self, raw: bytes, where: str) -> list[CarrierEvent]:
        if self.codec is None:
            raise ProtocolError(f"{where}: media before start")
        pcm = decode_audio(self.codec, raw, where)
        return [Audio(pcm)] if len(pcm) else []

    def encoded(self, frame: np.ndarray) -> str:
        return base64.b64encode(self.playback_codec.encode(frame)).decode("ascii")


class SnakeCaseSession(JsonStreamSession):
    """Twilio's event set with snake_case fields (Telnyx, Exotel): ``connected``, ``start``, ``media``,
    ``dtmf``, ``mark`` and ``stop`` in; ``media``, ``mark`` and ``clear`` out."""

    stream_key = "stream_id"             # top-level stream id field of inbound messages
    call_key = "call_control_id"         # the call's id inside ``start``
    outbound_stream_key: str | None = None   # echo the stream id in what we send under this name
    handlers = {"connected": "on_connected", "start": "on_start", "media": "on_media", "dtmf": "on_dtmf",
                "mark": "on_mark", "stop": "on_stop"}

    def codecs(self, media_format: dict) -> tuple[WireCodec, WireCodec | None]:
        """(inbound codec, playback codec or None for the same) from ``start.media_format``."""
        return codec_for(media_format.get("encoding"), media_format.get("sample_rate", 8000),
                         "start.media_format"), None

    def on_connected(self, msg: dict) -> list[CarrierEvent]:
        return []

    def on_start(self, msg: dict) -> list[CarrierEvent]:
        start = require(msg, "start", dict, "start")
        stream_id = msg.get(self.stream_key, start.get(self.stream_key))
        if not isinstance(stream_id, str):
            raise ProtocolError(f"start: field {self.stream_key!r} missing or not a str")
        meta = CallMeta(carrier=self.carrier, call_id=require(start, self.call_key, str, "start.start"),
                        stream_id=stream_id, from_number=_text(start.get("from")), to_number=_text(start.get("to")),
                        params=string_params(start.get("custom_parameters"), "start.custom_parameters"))
        return self.begin(meta, *self.codecs(require(start, "media_format", dict, "start.start")))

    def on_media(self, msg: dict) -> list[CarrierEvent]:
        media = require(msg, "media", dict, "media")
        if media.get("track", "inbound") not in ("inbound", "inbound_track"):
            return []
        return self.audio(media.get("payload"), f"media chunk {media.get('chunk')!r}")

    def on_dtmf(self, msg: dict) -> list[CarrierEvent]:
        return [Dtmf(require(require(msg, "dtmf", dict, "dtmf"), "digit", str, "dtmf.dtmf"))]

    def on_mark(self, msg: dict) -> list[CarrierEvent]:
        return [MarkPlayed(require(require(msg, "mark", dict, "mark"), "name", str, "mark.mark"))]

    def on_stop(self, msg: dict) -> list[CarrierEvent]:
        return [Stopped("stop message")]

    def message(self, event: str, **body) -> str:
        head = {"event": event}
        if self.outbound_stream_key:
            head[self.outbound_stream_key] = self.stream_id
        return compact({**head, **body})

    def send_audio(self, frame: np.ndarray) -> None:
        self.send_text(self.message("media", media={"payload": self.encoded(frame)}))

    def send_mark(self, name: str) -> None:
        self.send_text(self.message("mark", mark={"name": name}))

    def send_clear(self) -> None:
        self.send_text(self.message("clear"))


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
