"""What a carrier's simulator module provides to the simulated caller (``caller.py``): the carrier's wire protocol
(:class:`CarrierProtocol`), the connection it opens (:class:`MediaConnection`), and the events it decodes."""

from __future__ import annotations

import abc
import asyncio
import socket
import struct
from dataclasses import dataclass, field
from typing import Union

import aiohttp
import numpy as np

Message = Union[str, bytes]


@dataclass
class PlayAudio:
    """Server audio to append to the playback buffer (decoded to int16 8 kHz)."""
    pcm: np.ndarray
    wire_bytes: int  # payload size as it came on the wire (e.g. μ-law bytes)


@dataclass
class QueueMark:
    """A mark to echo once the audio queued before it has played (or been cleared)."""
    name: str


@dataclass
class ClearPlayback:
    """Empty the playback buffer; pending marks are echoed at once."""


ServerEvent = Union[PlayAudio, QueueMark, ClearPlayback]


class ProtocolViolation(Exception):
    """A server message the carrier would reject; recorded in ``CallResult.protocol_errors``."""


class CallSetupError(Exception):
    """The call could not be set up (webhook answer, TwiML, WebSocket handshake)."""


class StreamRefused(CallSetupError):
    """The media WebSocket upgrade was answered with a non-101 status."""

    def __init__(self, url: str, status: int, body: str = "") -> None:
        self.url, self.status, self.body = url, status, body
        super().__init__(f"media stream {url} refused: HTTP {status}" + (f": {body[:200]!r}" if body else ""))


@dataclass
class StreamTarget:
    """Where and how to open the media WebSocket."""
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    subprotocols: list[str] | None = None


class CarrierProtocol(abc.ABC):
    """One carrier's side of the call: setup and wire format. Stateful, one instance per call."""

    name: str = "carrier"

    @property
    def call_id(self) -> str:
        return ""

    @property
    def stream_id(self) -> str:
        return ""

    @abc.abstractmethod
    async def setup(self, http: aiohttp.ClientSession) -> StreamTarget:
        """Do what the carrier does before the stream (webhooks, …); say where to connect."""

    @abc.abstractmethod
    def opening_messages(self) -> list[Message]:
        """Messages sent right after the WebSocket opens; the stream starts when they are sent."""

    @abc.abstractmethod
    def encode_frame(self, pcm: np.ndarray, index: int, timestamp_ms: int) -> list[Message]:
        """Messages carrying one 20 ms caller frame (160 int16 samples). ``index`` counts from 0."""

    @abc.abstractmethod
    def decode(self, message: Message) -> list[ServerEvent]:
        """Turn one server message into events, or raise :class:`ProtocolViolation`."""

    @abc.abstractmethod
    def mark_played(self, name: str, cleared: bool) -> list[Message]:
        """Messages telling the server a mark was reached (``cleared``: flushed by a clear)."""

    def cleared(self) -> list[Message]:
        """Messages acknowledging a clear (none for Twilio)."""
        return []

    @abc.abstractmethod
    def closing_messages(self) -> list[Message]:
        """Messages sent when the call ends on the carrier's side (the caller hung up, or the carrier ended
        it), before the socket is closed."""

    carries_dtmf = False   # the stream tells the server about keypresses (encode_dtmf is implemented)

    def encode_dtmf(self, digit: str, duration_ms: int) -> list[Message]:
        """Messages telling the server the caller pressed ``digit`` (held ``duration_ms``)."""
        raise ProtocolViolation(f"{self.name}: the media stream carries no DTMF")

    def playback_level(self, buffered_samples: int) -> list[Message]:
        """Called whenever the playback buffer grew or played a frame: carriers that report their queue
        (flow control) answer with messages; one that has no buffer may raise :class:`ProtocolViolation`."""
        return []

    async def connect(self, target: StreamTarget, timeout_s: float) -> "MediaConnection | None":
        """Open the media connection; None (the default) means a WebSocket to ``target.url``."""
        return None


class MediaConnection(abc.ABC):
    """The media connection (a WebSocket, or e.g. AudioSocket's TCP): whole messages both ways.

    Messages are written at once, in the order given; what the socket cannot take yet is buffered, and
    ``writing_paused`` says when that buffer is full (``drain()`` waits until it is not). Sending on a
    closed connection raises ConnectionError; iteration ends when the peer closes."""

    close_code: int | None = None
    close_reason: str | None = None

    @abc.abstractmethod
    def send_nowait(self, message: Message) -> None: ...

    @property
    def writing_paused(self) -> bool:
        return False

    async def drain(self) -> None:
        """Wait until ``writing_paused`` is False."""

    @abc.abstractmethod
    def __aiter__(self): ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def abort(self) -> None:
        """Drop the connection as a network failure would: a TCP reset, nothing more sent."""


def reset_transport(transport: asyncio.BaseTransport) -> None:
    """Close ``transport`` with a TCP reset (linger 0): the peer gets no FIN and no last bytes."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()
