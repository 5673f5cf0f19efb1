"""SignalWire's side of a call: cXML, i.e. Twilio's webhook and Media Streams with SignalWire's differences.

The webhook is signed with the project's signing key (compatibility callbacks carry the signature as
``X-Twilio-Signature``), and ``<Stream codec=…>`` (PCMU, PCMA, L16@16000h, L16@24000h) sets the codec of
the stream both ways, which the ``start`` message's ``mediaFormat`` states. Everything else -- messages,
strict checks, marks, clear -- is :class:`~voicebot.simulator.twilio.TwilioProtocol`'s.
"""

from __future__ import annotations

import base64
import json
import os

import aiohttp
import numpy as np

from voicebot.audio.codecs import WireCodec
from voicebot.simulator.caller import CallResult, Message, PlayAudio, ProtocolViolation, ServerEvent, Step, \
    StreamTarget
from voicebot.simulator.jsonwire import dumps, simulate
from voicebot.simulator.twilio import TwilioProtocol

ENCODINGS = {"PCMU": "audio/x-mulaw", "PCMA": "audio/x-alaw", "L16": "audio/l16"}


def parse_codec(codec: str) -> tuple[str, int]:
    """``L16@16000h`` → (``L16``, 16000); ``PCMU`` → (``PCMU``, 8000)."""
    name, _, rate = codec.partition("@")
    if name not in ENCODINGS or (rate and not rate.rstrip("h").isdigit()):
        raise ProtocolViolation(f"<Stream codec={codec!r}> is not a codec SignalWire knows")
    return name, int(rate.rstrip("h")) if rate else 8000


class SignalWireProtocol(TwilioProtocol):
    name = "signalwire"

    def __init__(self, base_url: str, *, signing_key: str | None = None, codec: str | None = None,
                 webhook_path: str = "/signalwire/voice", **twilio) -> None:
        super().__init__(base_url, auth_token=signing_key, webhook_path=webhook_path, **twilio)
        self._codec_override = codec
        self.codec_name = "PCMU"
        self.codec = WireCodec("pcmu")

    async def setup(self, http: aiohttp.ClientSession) -> StreamTarget:
        target = await super().setup(http)
        self.codec_name = self._codec_override or self.stream_attributes.get("codec", "PCMU")
        name, rate = parse_codec(self.codec_name)
        self.codec = WireCodec(ENCODINGS[name], rate)
        return target

    def _with_codec(self, message: Message, patch) -> Message:
        if self.codec.encoding == "pcmu":
            return message
        obj = json.loads(message)
        patch(obj)
        return dumps(obj)

    def opening_messages(self) -> list[Message]:
        name, rate = parse_codec(self.codec_name)
        media_format = {"encoding": ENCODINGS[name], "sampleRate": rate, "channels": 1}
        connected, start = super().opening_messages()
        return [connected, self._with_codec(start, lambda obj: obj["start"].update(mediaFormat=media_format))]

    def encode_frame(self, pcm: np.ndarray, index: int, timestamp_ms: int) -> list[Message]:
        payload = base64.b64encode(self.codec.encode(pcm)).decode("ascii")
        return [self._with_codec(m, lambda obj: obj["media"].update(payload=payload))
                for m in super().encode_frame(pcm, index, timestamp_ms)]

    def decode(self, message: Message) -> list[ServerEvent]:
        events = super().decode(message)          # shape, fields, streamSid, base64: Twilio's checks
        if self.codec.encoding == "pcmu" or not any(isinstance(e, PlayAudio) for e in events):
            return events
        raw = base64.b64decode(json.loads(message)["media"]["payload"])
        if self.codec.encoding == "l16" and len(raw) % 2:
            raise ProtocolViolation(f"media: L16 payload of {len(raw)} bytes is not whole samples")
        return [PlayAudio(self.codec.decode(raw), len(raw))]


async def simulate_call(base_url: str, *, to: str, from_: str = "+15005550006", script: list[Step],
                        max_duration_s: float = 30.0, auth_token: str | None = None, **options) -> CallResult:
    """One simulated inbound SignalWire call against our server at ``base_url``.

    ``signing_key`` signs the webhook (default $SIGNALWIRE_SIGNING_KEY; ``auth_token`` is not used: it is
    Twilio's). Other ``options`` that :class:`SignalWireProtocol` or ``TwilioProtocol`` take (``codec``,
    ``custom_parameters``, ``stream_signature``, …) configure SignalWire; the rest go to ``SimulatedCall``."""
    options.setdefault("signing_key", os.environ.get("SIGNALWIRE_SIGNING_KEY"))
    return await simulate(SignalWireProtocol, base_url, script, max_duration_s, {"to": to, "from_": from_, **options})
