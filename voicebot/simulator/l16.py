"""What the simulated binary-L16 carriers share (Vonage, jambonz, FreeSWITCH, Asterisk chan_websocket):
connecting straight to the server's media WebSocket with the carrier's credentials and subprotocol, raw
audio in BINARY frames both ways, control in TEXT frames checked against the carrier's documented shape.

A carrier module says how it opens the stream (:meth:`L16Protocol.opening_messages`), which binary sizes it
takes (:meth:`L16Protocol.check_audio`) and what each control message means (:meth:`L16Protocol.control`).
"""

from __future__ import annotations

import abc

import base64
import json
from urllib.parse import urlencode

import aiohttp
import numpy as np

from voicebot.audio.codecs import WireCodec
from voicebot.simulator.caller import CarrierProtocol, Message, PlayAudio, ProtocolViolation, ServerEvent, StreamTarget
from voicebot.simulator.jsonwire import dumps, new_uuid, simulate, ws_url

__all__ = ["AUTO", "DirectProtocol", "L16Protocol", "basic_auth", "dumps", "exact_fields", "new_uuid", "simulate"]

AUTO = "auto"   # credentials: from the carrier's environment variable; None omits them


def basic_auth(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def exact_fields(obj: dict, want: dict[str, type], where: str, excerpt: str) -> None:
    """``obj`` has exactly the fields of ``want``, each of its type."""
    missing, extra = sorted(set(want) - set(obj)), sorted(set(obj) - set(want))
    if missing or extra:
        problems = [f"missing {missing}"] * bool(missing) + [f"extra {extra}"] * bool(extra)
        raise ProtocolViolation(f"{where}: {'; '.join(problems)}: {excerpt!r}")
    for key, kind in want.items():
        if not isinstance(obj[key], kind) or isinstance(obj[key], bool):
            raise ProtocolViolation(f"{where}.{key} is {type(obj[key]).__name__}, expected {kind.__name__}: "
                                    f"{excerpt!r}")


class DirectProtocol(CarrierProtocol):
    """A carrier that connects straight to the server (no webhook first), its call named by one UUID."""

    def __init__(self, call_id: str | None = None) -> None:
        self.call_uuid = call_id or new_uuid()

    @property
    def call_id(self) -> str:
        return self.call_uuid

    @property
    def stream_id(self) -> str:
        return self.call_uuid


class L16Protocol(DirectProtocol):
    """Raw audio in BINARY frames both ways (``codec``, L16 little-endian unless told otherwise), TEXT
    frames for control. One instance per call."""

    path = ""
    subprotocol: str | None = None

    def __init__(self, base_url: str, *, headers: dict[str, str] | None = None,
                 query: dict[str, str] | None = None, codec: WireCodec | None = None,
                 playback_codec: WireCodec | None = None, call_id: str | None = None) -> None:
        super().__init__(call_id)
        self.url = ws_url(base_url, self.path) + ("?" + urlencode(query) if query else "")
        self.headers = dict(headers or {})
        self.codec = codec or WireCodec("l16", 8000)                 # what the caller sends
        self.playback_codec = playback_codec or WireCodec(self.codec.encoding, self.codec.rate)

    async def setup(self, http: aiohttp.ClientSession) -> StreamTarget:
        return StreamTarget(self.url, self.headers, [self.subprotocol] if self.subprotocol else None)

    def encode_frame(self, pcm: np.ndarray, index: int, timestamp_ms: int) -> list[Message]:
        return [self.codec.encode(pcm)]

    def closing_messages(self) -> list[Message]:
        return []       # these carriers hang up by closing the socket

    def decode(self, message: Message) -> list[ServerEvent]:
        if isinstance(message, bytes):
            self.check_audio(message)
            if self.playback_codec.encoding == "l16" and len(message) % 2:
                raise ProtocolViolation(f"binary frame of {len(message)} bytes is not whole 16-bit samples")
            return [PlayAudio(self.playback_codec.decode(message), len(message))]
        return self.control(message, message if len(message) <= 120 else message[:117] + "...")

    def check_audio(self, data: bytes) -> None:
        """Raise ProtocolViolation for a binary frame the carrier would refuse."""

    @abc.abstractmethod
    def control(self, text: str, excerpt: str) -> list[ServerEvent]:
        """One TEXT frame from the server."""

    @staticmethod
    def json_object(text: str, excerpt: str) -> dict:
        try:
            obj = json.loads(text)
        except ValueError:
            raise ProtocolViolation(f"not JSON: {excerpt!r}") from None
        if not isinstance(obj, dict):
            raise ProtocolViolation(f"not a JSON object: {excerpt!r}")
        return obj

