"""Asterisk's side of an AudioSocket call (``telephony-protocols.md`` §6b): a TCP client, not a WebSocket.

Asterisk connects to the server's AudioSocket port, sends the call's UUID (kind 0x01), then one 20 ms slin
frame (kind 0x10, 320 bytes) every 20 ms, a DTMF message (kind 0x03, the digit in ASCII) per key pressed,
and a hangup (kind 0x00) when the caller hangs up. It takes slin
frames back and plays them as they come: there is no buffer to fill, no marks and no clear, so the server
must pace its audio in real time. Audio arriving more than ``max_ahead_ms`` ahead of playback is reported
as a violation (a real Asterisk would play it late or garble it), as is anything but slin or hangup.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

import aiohttp
import numpy as np

from voicebot.audio.codecs import WireCodec
from voicebot.simulator.caller import (CallResult, CallSetupError, MediaConnection, Message, PlayAudio,
                                       ProtocolViolation, ServerEvent, Step, StreamTarget, reset_transport)
from voicebot.simulator.l16 import DirectProtocol, simulate

KIND_HANGUP, KIND_UUID, KIND_DTMF, KIND_SLIN = 0x00, 0x01, 0x03, 0x10
DEFAULT_PORT = 9092


def tlv(kind: int, payload: bytes = b"") -> bytes:
    return bytes((kind,)) + len(payload).to_bytes(2, "big") + payload


class TcpConnection(MediaConnection):
    """AudioSocket messages over one TCP connection (each message yielded whole, header included)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def send_nowait(self, message: Message) -> None:
        if self.writer.is_closing():
            raise ConnectionResetError("connection closed")
        self.writer.write(message if isinstance(message, bytes) else message.encode())

    @property
    def writing_paused(self) -> bool:
        transport = self.writer.transport
        return transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]

    async def drain(self) -> None:
        await self.writer.drain()

    async def __aiter__(self):
        while True:
            try:
                header = await self.reader.readexactly(3)
                payload = await self.reader.readexactly(int.from_bytes(header[1:], "big"))
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            yield header + payload

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()

    async def abort(self) -> None:
        reset_transport(self.writer.transport)


class AudioSocketProtocol(DirectProtocol):
    name = "audiosocket"

    def __init__(self, base_url: str, *, port: int | None = None, max_ahead_ms: float = 80.0,
                 call_id: str | None = None) -> None:
        super().__init__(call_id)
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = port or (parts.port if parts.scheme == "tcp" else None) or DEFAULT_PORT
        self.codec = WireCodec("l16", 8000)
        self.max_ahead_samples = max_ahead_ms * 8
        self._ahead = False
        self.hung_up_by_server = False

    async def setup(self, http: aiohttp.ClientSession) -> StreamTarget:
        return StreamTarget(f"tcp://{self.host}:{self.port}")

    async def connect(self, target: StreamTarget, timeout_s: float) -> MediaConnection:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), timeout_s)
        except (OSError, asyncio.TimeoutError) as exc:
            raise CallSetupError(f"AudioSocket {target.url}: {type(exc).__name__}: {exc}") from exc
        return TcpConnection(reader, writer)

    def opening_messages(self) -> list[Message]:
        return [tlv(KIND_UUID, bytes.fromhex(self.call_uuid.replace("-", "")))]

    def encode_frame(self, pcm: np.ndarray, index: int, timestamp_ms: int) -> list[Message]:
        return [tlv(KIND_SLIN, self.codec.encode(pcm))]

    def decode(self, message: Message) -> list[ServerEvent]:
        if isinstance(message, str):
            raise ProtocolViolation("text on an AudioSocket connection")
        kind, payload = message[0], message[3:]
        if kind == KIND_SLIN:
            if len(payload) % 2:
                raise ProtocolViolation(f"slin frame of {len(payload)} bytes is not whole 16-bit samples")
            return [PlayAudio(self.codec.decode(payload), len(payload))]
        if kind == KIND_HANGUP:
            if payload:
                raise ProtocolViolation(f"hangup message with a {len(payload)}-byte payload")
            self.hung_up_by_server = True
            return []
        raise ProtocolViolation(f"message kind 0x{kind:02x} ({len(payload)} bytes): the server may send only "
                                "slin audio (0x10) and hangup (0x00)")

    def playback_level(self, buffered_samples: int) -> list[Message]:
        ahead = buffered_samples > self.max_ahead_samples
        if ahead and not self._ahead:
            self._ahead = True
            raise ProtocolViolation(f"audio {buffered_samples / 8:.0f} ms ahead of real time: Asterisk has no "
                                    "buffer, frames must be paced")
        self._ahead = ahead
        return []

    carries_dtmf = True

    def encode_dtmf(self, digit: str, duration_ms: int) -> list[Message]:
        return [tlv(KIND_DTMF, digit.encode("ascii"))]

    def mark_played(self, name: str, cleared: bool) -> list[Message]:
        return []       # never called: AudioSocket has no marks

    def closing_messages(self) -> list[Message]:
        return [tlv(KIND_HANGUP)]


async def simulate_call(base_url: str, *, to: str | None = None, from_: str = "+15005550006", script: list[Step],
                        max_duration_s: float = 30.0, **options) -> CallResult:
    """One simulated AudioSocket call. ``base_url``: ``tcp://host:port``, or the server's http URL with the
    AudioSocket ``port`` option (default 9092). AudioSocket carries no numbers, so ``to``/``from_`` are
    ignored: the server's configured persona answers. Options: ``port``, ``max_ahead_ms``; the rest go to
    :class:`SimulatedCall`."""
    return await simulate(AudioSocketProtocol, base_url, script, max_duration_s, dict(options))
