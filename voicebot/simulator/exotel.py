"""Exotel's side of a call: the Voicebot applet's bidirectional stream (telephony-protocols.md §8).

Exotel connects to the applet's URL (``?sample-rate=`` picks 8/16/24 kHz; up to three custom query
parameters) with Basic credentials from the URL as an ``Authorization`` header, sends ``connected``,
``start`` (``stream_sid``, ``call_sid``, ``from``, ``to``, ``custom_parameters``, ``media_format`` with
string numbers), the caller's raw PCM16 little-endian audio in ~100 ms ``media`` chunks and a ``dtmf``
(``dtmf{digit, duration}``, text numbers) per key pressed, every message numbered by ``sequence_number``. What the server may send: ``media`` (``stream_sid``, ``media.payload``),
``mark`` (``stream_sid``, ``mark.name``) and ``clear`` (``stream_sid``) -- exactly those fields, our
``stream_sid``. A media chunk must be a whole multiple of 320 bytes and at most 100 kB, or Exotel plays
gaps; chunks under 100 ms risk jitter (the server's chunk sizes are in ``CallResult.media_received``).
A mark comes back when the audio before it has played; a clear empties the buffer and returns queued marks.
"""

from __future__ import annotations

import base64
import os
import secrets
from urllib.parse import urlencode

import numpy as np

from voicebot.audio.codecs import WireCodec
from voicebot.simulator.caller import CallResult, Message, ProtocolViolation, Step
from voicebot.simulator.jsonwire import SnakeCaseProtocol, dumps, simulate, snake_case_schema, ws_url

CHUNK_FRAMES = 5                 # Exotel sends the caller's audio every ~100 ms
CHUNK_QUANTUM, MAX_CHUNK_BYTES = 320, 100_000


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


class ExotelProtocol(SnakeCaseProtocol):
    name = "exotel"
    stream_key = "stream_sid"
    server_schema = snake_case_schema("stream_sid")

    def __init__(self, base_url: str, *, to: str, from_: str = "+15005550006", username: str | None = "exotel",
                 password: str | None = None, sample_rate: int = 8000,
                 custom_parameters: dict[str, str] | None = None, path: str = "/exotel/media") -> None:
        self.custom_parameters = dict(custom_parameters or {})
        query = {**({"sample-rate": str(sample_rate)} if sample_rate != 8000 else {}), **self.custom_parameters}
        if len(self.custom_parameters) > 3 or len(urlencode(self.custom_parameters)) > 256:
            raise ValueError("Exotel passes at most 3 custom parameters, 256 characters in all")
        headers = {}
        if username is not None and password is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        self.account_sid, self.call_sid, self.stream_sid = _sid("AC"), _sid("CA"), _sid("MZ")
        super().__init__(ws_url(base_url, path) + ("?" + urlencode(query) if query else ""), headers,
                         call_id=self.call_sid, stream_id=self.stream_sid)
        self.to, self.from_ = to, from_
        self.sample_rate = sample_rate
        self.codec = self.playback_codec = WireCodec("l16", sample_rate)
        self._chunk: list[np.ndarray] = []
        self._chunks_sent = 0

    def opening_messages(self) -> list[Message]:
        start = self.numbered("start", start={
            "stream_sid": self.stream_sid, "call_sid": self.call_sid, "account_sid": self.account_sid,
            "from": self.from_, "to": self.to, "custom_parameters": self.custom_parameters,
            "media_format": {"encoding": "audio/x-raw", "sample_rate": str(self.sample_rate), "bit_rate": "16"}})
        return [dumps({"event": "connected"}), start]

    def encode_frame(self, pcm: np.ndarray, index: int, timestamp_ms: int) -> list[Message]:
        self._chunk.append(pcm)
        return self._send_chunk() if len(self._chunk) == CHUNK_FRAMES else []

    def _send_chunk(self) -> list[Message]:
        if not self._chunk:
            return []
        pcm, self._chunk = np.concatenate(self._chunk), []
        self._chunks_sent += 1
        timestamp = (self._chunks_sent - 1) * CHUNK_FRAMES * 20
        return [self.numbered("media", media={"chunk": str(self._chunks_sent), "timestamp": str(timestamp),
                                              "payload": self.payload(self.codec, pcm)})]

    carries_dtmf = True

    def encode_dtmf(self, digit: str, duration_ms: int) -> list[Message]:
        return [self.numbered("dtmf", dtmf={"digit": digit, "duration": str(duration_ms)})]

    def closing_messages(self) -> list[Message]:
        return self._send_chunk() + [self.numbered("stop", stop={"call_sid": self.call_sid,
                                                                  "account_sid": self.account_sid,
                                                                  "reason": "callended"})]

    def check_audio_bytes(self, event: str, size: int, codec: WireCodec) -> None:
        if size == 0 or size % CHUNK_QUANTUM or size > MAX_CHUNK_BYTES:
            raise ProtocolViolation(f"{event}: chunk of {size} bytes (Exotel plays gaps unless a chunk is a "
                                    f"whole multiple of {CHUNK_QUANTUM} bytes, at most {MAX_CHUNK_BYTES} bytes)")


async def simulate_call(base_url: str, *, to: str, from_: str = "+15005550006", script: list[Step],
                        max_duration_s: float = 30.0, auth_token: str | None = None, **options) -> CallResult:
    """One simulated Exotel Voicebot call against our server at ``base_url``.

    ``options`` that :class:`ExotelProtocol` takes (``username``, ``password`` -- default
    $EXOTEL_STREAM_PASSWORD --, ``sample_rate``, ``custom_parameters``) configure Exotel; the rest go to
    ``SimulatedCall``. ``auth_token`` (Twilio's, passed by ``voicebot simulate``) is not used."""
    options.setdefault("password", os.environ.get("EXOTEL_STREAM_PASSWORD"))
    return await simulate(ExotelProtocol, base_url, script, max_duration_s, {"to": to, "from_": from_, **options})
