"""What Vonage, jambonz and FreeSWITCH share: binary L16 audio both ways, JSON text frames for control.

The carrier opens with one JSON text message describing the call (Vonage ``websocket:connected``,
jambonz's call attributes, FreeSWITCH's metadata); audio then flows as BINARY frames of 16-bit signed
little-endian mono PCM at the stream's rate, and everything else is JSON text. A carrier module says how
to read its opening message (:meth:`L16Session.opening`) and its control messages (:meth:`L16Session.control`),
and how to encode marks and clears; the rest — codec per direction, binary framing, JSON helpers, the
parameters a call can carry to choose its persona — is here once.
"""

from __future__ import annotations

import json
import uuid
from abc import abstractmethod
from collections.abc import Mapping

import numpy as np

from ..audio.codecs import UnsupportedCodec, WireCodec
from .base import (Audio, CallMeta, CarrierEvent, CarrierOptions, CarrierSession, FatalProtocolError,
                   ProtocolError, Started, parse_json_object)


def parse_rate(value: object, where: str) -> int:
    """A sample rate as carriers write it: 16000, "16000", "16k", "audio/l16;rate=16000"."""
    text = str(value).strip().lower()
    if ";rate=" in text:
        text = text.split(";rate=", 1)[1].split(";", 1)[0]
    try:
        return int(float(text[:-1]) * 1000) if text.endswith("k") else int(text)
    except (ValueError, OverflowError):    # OverflowError: "infk"
        raise FatalProtocolError(f"{where}: sample rate {value!r} is not a number") from None


def call_params(msg: Mapping, query: Mapping[str, str]) -> dict[str, str]:
    """The string-valued parameters of a call: URL query, then the opening message's scalar fields, then
    its nested ``metadata`` object (later ones win)."""
    params = {str(k): str(v) for k, v in query.items()}
    for source in (msg, msg.get("metadata") if isinstance(msg.get("metadata"), dict) else {}):
        params.update({str(k): str(v) for k, v in source.items()
                       if isinstance(v, (str, int, float)) and not isinstance(v, bool)})
    return params


class L16Session(CarrierSession):
    """Binary PCM16 LE audio both ways, JSON text control, one opening message that starts the call."""

    opening_name = "opening"      # what the carrier calls its first message, for error messages

    def __init__(self, send_text, send_bytes, *, options: CarrierOptions = CarrierOptions(),
                 query: Mapping[str, str] | None = None) -> None:
        super().__init__(send_text, send_bytes)
        self.options = options
        self.fallback_persona = options.persona
        self.query = dict(query or {})
        self.decoder: WireCodec | None = None
        self.encoder: WireCodec | None = None
        self.channels = 1

    @property
    def started(self) -> bool:
        return self.decoder is not None

    # -- carrier → us ---------------------------------------------------------------------------
    def handle_text(self, text: str) -> list[CarrierEvent]:
        msg = parse_json_object(text)
        if not self.started:
            return self.opening(msg)
        return self.control(msg)

    def handle_bytes(self, data: bytes) -> list[CarrierEvent]:
        if not self.started:
            raise ProtocolError(f"binary audio of {len(data)} bytes before the {self.opening_name} message")
        if len(data) % (2 * self.channels):
            raise ProtocolError(f"binary audio of {len(data)} bytes is not a whole number of "
                                f"{self.channels}-channel 16-bit samples")
        if self.channels > 1:   # interleaved: the caller is the first channel
            data = np.frombuffer(data, dtype="<i2")[::self.channels].tobytes()
        return [Audio(self.decoder.decode(data))]

    @abstractmethod
    def opening(self, msg: dict) -> list[CarrierEvent]:
        """The first JSON message: describe the call with :meth:`begin`."""

    @abstractmethod
    def control(self, msg: dict) -> list[CarrierEvent]:
        """Any later JSON message."""

    def begin(self, *, call_id: str | None, params: dict[str, str], rate: int, playback_rate: int | None = None,
              to_key: str = "to", from_key: str = "from", stream_id: str | None = None) -> list[CarrierEvent]:
        """Set up the codecs and announce the call. ``params`` may name a ``persona``."""
        try:
            self.decoder = WireCodec("l16", rate)
            self.encoder = WireCodec("l16", playback_rate or rate)
        except UnsupportedCodec as exc:
            self.decoder = None
            raise FatalProtocolError(f"{self.opening_name}: {exc}") from None
        meta = CallMeta(carrier=self.carrier, call_id=call_id or f"{self.carrier}-{uuid.uuid4().hex[:16]}",
                        stream_id=stream_id, from_number=params.get(from_key) or None,
                        to_number=params.get(to_key) or None, params=params,
                        persona=params.get("persona") or None)
        return [Started(meta)]

    # -- us → carrier ---------------------------------------------------------------------------
    def send_audio(self, frame: np.ndarray) -> None:
        self.send_bytes(self.encoder.encode(frame))

    def send_json(self, obj: dict) -> None:
        self.send_text(json.dumps(obj, separators=(",", ":")))
