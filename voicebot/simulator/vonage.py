"""Vonage's side of a Voice API WebSocket call (``telephony-protocols.md`` §4).

Vonage connects with the NCCO's ``authorization`` value as the ``Authorization`` header, sends
``websocket:connected`` (content type plus the NCCO headers, flattened), then binary L16 frames of exactly
20 ms, and ``websocket:dtmf`` (``digit``, ``duration`` in ms) per key pressed. What the server sends is checked as Vonage would: binary frames of exactly 20 ms at the stream's rate
(320/640/960 bytes), at most 3072 frames buffered, and only ``{"action":"clear"}`` and
``{"action":"notify","payload":{…}}`` as text. A clear is answered with ``websocket:cleared``, a notify with
``websocket:notify`` carrying its payload once the audio before it has played.
"""

from __future__ import annotations

import json
import os

from voicebot.audio.codecs import WireCodec
from voicebot.simulator.caller import (CallResult, ClearPlayback, Message, ProtocolViolation, QueueMark,
                                       ServerEvent, Step)
from voicebot.simulator.l16 import AUTO, L16Protocol, dumps, exact_fields, simulate

BUFFER_FRAMES = 3072


class VonageProtocol(L16Protocol):
    name = "vonage"
    path = "/vonage/media"

    def __init__(self, base_url: str, *, to: str, from_: str = "+15005550006", rate: int = 16000,
                 authorization: str | None = AUTO, headers: dict[str, str] | None = None,
                 call_id: str | None = None) -> None:
        if authorization == AUTO:
            token = os.environ.get("VONAGE_WS_TOKEN")
            authorization = f"Bearer {token}" if token else None
        super().__init__(base_url, headers={"Authorization": authorization} if authorization else {},
                         codec=WireCodec("l16", rate), call_id=call_id)
        self.rate = rate
        self.ncco_headers = {"to": to, "from": from_, "uuid": self.call_uuid, **(headers or {})}

    def opening_messages(self) -> list[Message]:
        return [dumps({"event": "websocket:connected", "content-type": f"audio/l16;rate={self.rate}",
                       **self.ncco_headers})]

    def check_audio(self, data: bytes) -> None:
        if len(data) != self.codec.frame_bytes:
            raise ProtocolViolation(f"binary frame of {len(data)} bytes: Vonage takes exactly 20 ms, "
                                    f"{self.codec.frame_bytes} bytes at {self.rate} Hz")

    def playback_level(self, buffered_samples: int) -> list[Message]:
        if buffered_samples > BUFFER_FRAMES * 160:
            raise ProtocolViolation(f"{buffered_samples // 160} frames buffered: Vonage keeps {BUFFER_FRAMES}")
        return []

    def control(self, text: str, excerpt: str) -> list[ServerEvent]:
        obj = self.json_object(text, excerpt)
        action = obj.get("action")
        if action == "clear":
            exact_fields(obj, {"action": str}, "clear", excerpt)
            return [ClearPlayback()]
        if action == "notify":
            exact_fields(obj, {"action": str, "payload": dict}, "notify", excerpt)
            return [QueueMark(dumps(obj["payload"]))]
        raise ProtocolViolation(f"unknown action {action!r} (only clear, notify): {excerpt!r}")

    carries_dtmf = True

    def encode_dtmf(self, digit: str, duration_ms: int) -> list[Message]:
        return [dumps({"event": "websocket:dtmf", "digit": digit, "duration": duration_ms})]

    def cleared(self) -> list[Message]:
        return [dumps({"event": "websocket:cleared"})]

    def mark_played(self, name: str, cleared: bool) -> list[Message]:
        if cleared:
            return []    # notifications queued behind cleared audio are dropped with it
        return [dumps({"event": "websocket:notify", "payload": json.loads(name)})]


async def simulate_call(base_url: str, *, to: str, from_: str = "+15005550006", script: list[Step],
                        max_duration_s: float = 30.0, **options) -> CallResult:
    """One simulated inbound Vonage call against our server. Options: ``rate`` (8000/16000/24000),
    ``authorization`` (header value; ``AUTO`` = ``Bearer $VONAGE_WS_TOKEN``, None omits it), ``headers``
    (extra NCCO headers, e.g. ``persona``); the rest go to :class:`SimulatedCall`."""
    return await simulate(VonageProtocol, base_url, script, max_duration_s, {"to": to, "from_": from_, **options})
