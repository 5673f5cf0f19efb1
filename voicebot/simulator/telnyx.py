"""Telnyx's side of a call: the media-streaming WebSocket as Telnyx speaks it (telephony-protocols.md §2).

Telnyx connects to the ``stream_url`` with the ``stream_auth_token`` as the ``x-telnyx-streaming-auth-token``
header and in the ``connected`` frame, then sends ``start`` and one ``media`` per 20 ms RTP packet
(base64 payload, no header) and a ``dtmf`` (``occurred_at``, ``dtmf.digit``) per key pressed, every
message numbered by ``sequence_number``. Telnyx does not promise
order: ``shuffle`` holds a media message back past the next one with that probability. What the server
may send: ``media`` (``media.payload`` only: 20 ms to 30 s of audio in the bidirectional codec),
``mark`` (``mark.name``) and ``clear`` -- exactly those fields, no stream id. A mark comes back when the
audio before it has played; a clear empties the buffer and returns the queued marks.
"""

from __future__ import annotations

import os
import random
from datetime import datetime, timezone

import numpy as np

from voicebot.audio.codecs import WireCodec
from voicebot.simulator.caller import CallResult, Message, ProtocolViolation, Step
from voicebot.simulator.jsonwire import SnakeCaseProtocol, dumps, new_uuid, simulate, snake_case_schema, ws_url

TOKEN_HEADER = "x-telnyx-streaming-auth-token"
L16_BYTEORDER = "big"        # RTP L16 is network byte order
MIN_PLAYBACK_MS, MAX_PLAYBACK_MS = 20, 30_000


class TelnyxProtocol(SnakeCaseProtocol):
    name = "telnyx"
    server_schema = snake_case_schema(None)        # one bidirectional stream per call: no stream id

    def __init__(self, base_url: str, *, to: str, from_: str = "+15005550006", token: str | None = None,
                 token_header: bool = True, token_in_connected: bool = True, encoding: str = "PCMU",
                 sample_rate: int = 8000, bidirectional_codec: str | None = None,
                 bidirectional_sampling_rate: int | None = None, custom_parameters: dict[str, str] | None = None,
                 shuffle: float = 0.0, shuffle_seed: int = 0, path: str = "/telnyx/media",
                 stream_url: str | None = None, call_control_id: str | None = None,
                 client_state: str | None = None) -> None:
        # stream_url (the dial's, query and all) instead of base_url + path; client_state: echoed in start
        self.call_control_id = call_control_id or "v3:" + new_uuid()
        self.client_state = client_state
        super().__init__(stream_url or ws_url(base_url, path), {TOKEN_HEADER: token} if token and token_header else None,
                         call_id=self.call_control_id, stream_id=new_uuid())
        self.to, self.from_ = to, from_
        self._token = token if token_in_connected else None
        self.encoding, self.sample_rate = encoding, sample_rate
        self.codec = WireCodec(encoding, sample_rate, byteorder=L16_BYTEORDER)
        playback = (bidirectional_codec or encoding, bidirectional_sampling_rate or sample_rate)
        self.playback_codec = WireCodec(*playback, byteorder=L16_BYTEORDER)
        self.custom_parameters = dict(custom_parameters or {})
        self.shuffle = shuffle
        self._rng = random.Random(shuffle_seed)
        self._held: Message | None = None
        self.reordered = 0            # media messages sent after a later one

    def opening_messages(self) -> list[Message]:
        connected = {"event": "connected", "version": "1.0.0"}
        if self._token:
            connected[TOKEN_HEADER] = self._token
        start = self.numbered("start", start={
            "user_id": new_uuid(), "call_control_id": self.call_control_id, "call_session_id": new_uuid(),
            "from": self.from_, "to": self.to, "tags": [], "client_state": self.client_state,
            "custom_parameters": self.custom_parameters,
            "media_format": {"encoding": self.encoding, "sample_rate": self.sample_rate, "channels": 1}})
        return [dumps(connected), start]

    def encode_frame(self, pcm: np.ndarray, index: int, timestamp_ms: int) -> list[Message]:
        message = self.numbered("media", media={"track": "inbound", "chunk": str(index + 1),
                                                "timestamp": str(timestamp_ms),
                                                "payload": self.payload(self.codec, pcm)})
        if self._held is not None:                  # the held one goes right after its successor
            held, self._held = self._held, None
            self.reordered += 1
            return [message, held]
        if self.shuffle and self._rng.random() < self.shuffle:
            self._held = message
            return []
        return [message]

    carries_dtmf = True

    def encode_dtmf(self, digit: str, duration_ms: int) -> list[Message]:
        occurred_at = datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
        return [self.numbered("dtmf", occurred_at=occurred_at, dtmf={"digit": digit})]

    def closing_messages(self) -> list[Message]:
        held, self._held = ([self._held] if self._held else []), None
        return held + [self.numbered("stop", stop={"user_id": new_uuid(), "call_control_id": self.call_control_id})]

    def check_audio_bytes(self, event: str, size: int, codec: WireCodec) -> None:
        super().check_audio_bytes(event, size, codec)
        ms = size * 1000 / (codec.rate * (2 if codec.encoding == "l16" else 1))
        if not MIN_PLAYBACK_MS <= ms <= MAX_PLAYBACK_MS:
            raise ProtocolViolation(f"{event}: {ms:g} ms of audio in one RTP-mode message (Telnyx takes "
                                    f"{MIN_PLAYBACK_MS} ms to {MAX_PLAYBACK_MS // 1000} s)")


async def simulate_call(base_url: str, *, to: str, from_: str = "+15005550006", script: list[Step],
                        max_duration_s: float = 30.0, auth_token: str | None = None, **options) -> CallResult:
    """One simulated Telnyx call against our server at ``base_url``.

    ``options`` that :class:`TelnyxProtocol` takes (``token``, default $TELNYX_STREAM_TOKEN; ``shuffle``,
    ``encoding``, ``sample_rate``, ``custom_parameters``, …) configure Telnyx; the rest go to
    ``SimulatedCall``. ``auth_token`` (Twilio's, passed by ``voicebot simulate``) is not used."""
    options.setdefault("token", os.environ.get("TELNYX_STREAM_TOKEN"))
    return await simulate(TelnyxProtocol, base_url, script, max_duration_s, {"to": to, "from_": from_, **options})
