"""Asterisk AudioSocket over plain TCP (``telephony-protocols.md`` §6b).

Asterisk is the TCP client: ``AudioSocket(${UUID()},bot.internal:9092)`` in the dialplan, ``Dial(AudioSocket/
bot.internal:9092/${UUID()})`` or ARI externalMedia with ``encapsulation=audiosocket``. Every message is
``kind:u8 | length:u16 BE | payload``: the call's UUID first (0x01), then signed-linear audio (0x10 = 8 kHz,
320 bytes per 20 ms; 0x12/0x13 = 16/24 kHz in newer Asterisk), DTMF (0x03), hangup (0x00) or error (0xff).

AudioSocket carries nothing but audio: **no authentication** (so we listen on ``carriers.audiosocket.host``,
loopback unless configured otherwise — put it on a private network only), **no called number** (the call is
answered by ``carriers.audiosocket.persona`` or the default persona), **no marks and no buffer**: Asterisk
plays frames as they arrive, so we send in real time with a lead of two frames, a barge-in is simply
stopping, and all audio sent counts as heard (it can no longer be taken back: see
:meth:`~voicebot.telephony.base.CarrierSession.reached_when_sent`). The listener runs only when
``carriers.audiosocket.port`` is set, and starts and stops with the application.
"""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import structlog
from aiohttp import web

from ..audio.codecs import UnsupportedCodec, WireCodec
from .base import (Audio, CallMeta, CarrierEvent, CarrierOptions, CarrierSession, FatalProtocolError, ProtocolError,
                   Started, Stopped, decode_audio, dtmf, read_carrier_options)

log = structlog.get_logger("voicebot.audiosocket")

KIND_HANGUP = 0x00
KIND_UUID = 0x01
KIND_DTMF = 0x03
KIND_SLIN = 0x10
KIND_ERROR = 0xFF
SLIN_RATES = {0x10: 8000, 0x11: 12000, 0x12: 16000, 0x13: 24000, 0x14: 32000, 0x15: 44100, 0x16: 48000,
              0x17: 96000, 0x18: 192000}
HANGUP_MESSAGE = bytes((KIND_HANGUP, 0, 0))
LEAD_MS = 40


def message(kind: int, payload: bytes = b"") -> bytes:
    return bytes((kind,)) + len(payload).to_bytes(2, "big") + payload


async def read_message(reader: asyncio.StreamReader) -> bytes:
    """One whole ``kind | length | payload`` message, header included."""
    header = await reader.readexactly(3)
    length = int.from_bytes(header[1:3], "big")
    return header + (await reader.readexactly(length) if length else b"")


class AudioSocketSession(CarrierSession):
    carrier = "audiosocket"
    max_lead_ms = LEAD_MS
    can_flush = False       # Asterisk plays what it was sent; a clear only stops us sending more

    def __init__(self, send_text, send_bytes, *, options: CarrierOptions = CarrierOptions()) -> None:
        super().__init__(send_text, send_bytes)
        self.fallback_persona = options.persona
        self.call_uuid: str | None = None
        self._decoders: dict[int, WireCodec] = {}
        self._out_kind: int | None = None       # we answer in the format Asterisk speaks
        self._encoder: WireCodec | None = None

    def handle_text(self, text: str) -> list[CarrierEvent]:
        raise ProtocolError("AudioSocket carries no text")

    def handle_bytes(self, data: bytes) -> list[CarrierEvent]:
        kind, payload = data[0], data[3:]
        if self.call_uuid is None:
            if kind != KIND_UUID:
                raise FatalProtocolError(f"first message must be the call's UUID (kind 0x01), got kind 0x{kind:02x}")
            if len(payload) != 16:
                raise FatalProtocolError(f"UUID message of {len(payload)} bytes, expected 16")
            self.call_uuid = str(uuid.UUID(bytes=payload))
            return [Started(CallMeta(carrier="audiosocket", call_id=self.call_uuid, stream_id=self.call_uuid))]
        if kind in SLIN_RATES:
            return [Audio(decode_audio(self._decoder(kind), payload, f"slin audio (kind 0x{kind:02x})"))]
        if kind == KIND_DTMF:
            if len(payload) != 1:
                raise ProtocolError(f"DTMF message of {len(payload)} bytes, expected 1")
            return [dtmf(payload.decode("latin-1"), "DTMF message")]
        if kind == KIND_HANGUP:
            return [Stopped("hangup message")]
        if kind == KIND_ERROR:
            return [Stopped(f"error message from Asterisk (code {payload.hex() or 'none'})")]
        if kind == KIND_UUID:
            raise ProtocolError("second UUID message on one connection ignored")
        raise ProtocolError(f"unknown message kind 0x{kind:02x} ({len(payload)} bytes)")

    def _decoder(self, kind: int) -> WireCodec:
        codec = self._decoders.get(kind)
        if codec is None:
            try:
                codec = self._decoders[kind] = WireCodec("l16", SLIN_RATES[kind])
            except UnsupportedCodec as exc:
                raise FatalProtocolError(f"audio kind 0x{kind:02x}: {exc}") from None
            if self._out_kind is None:
                self._out_kind, self._encoder = kind, WireCodec("l16", SLIN_RATES[kind])
        return codec

    def send_audio(self, frame: np.ndarray) -> None:
        if self._encoder is None:
            self._out_kind, self._encoder = KIND_SLIN, WireCodec("l16", 8000)
        self.send_bytes(message(self._out_kind, self._encoder.encode(frame)))

    def send_mark(self, name: str) -> None:
        self.reached_when_sent(name)     # no marks on the wire, and nothing sent can be taken back

    def send_clear(self) -> None:
        """Asterisk keeps no buffer of ours: having stopped sending is the clear."""

    def send_hangup(self) -> None:
        self.send_bytes(HANGUP_MESSAGE)


class AudioSocketListener:
    """The TCP server Asterisk connects to; one task per connection, all cancelled when it stops."""

    def __init__(self, services, host: str, port: int, options: CarrierOptions) -> None:
        self.services, self.host, self.port, self.options = services, host, port, options
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task] = set()
        self._stopping = False

    async def start(self, app: web.Application | None = None) -> None:
        self._stopping = False
        self._server = await asyncio.start_server(self._connected, self.host, self.port,
                                                  reuse_port=self.services.settings.workers > 1)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("audiosocket_listening", host=self.host, port=self.port, authentication="none: network only",
                 persona=self.options.persona)

    async def stop(self, app: web.Application | None = None) -> None:
        if self._server is None:
            return
        self._server.close()
        self._stopping = True
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
        try:
            await self.services.answer.tcp(reader, writer, read_message, AudioSocketSession,
                                           options=self.options)
        except asyncio.CancelledError:
            # Cancelled by stop(): end as a finished connection. asyncio's stream callback (Python 3.11) reads
            # task.exception() of a cancelled task and logs the CancelledError as an error.
            if not self._stopping:
                raise
        finally:
            self._connections.discard(task)


AUDIOSOCKET = web.AppKey("audiosocket", AudioSocketListener)


def add_routes(app: web.Application, services) -> None:
    """No HTTP route: a TCP listener started and stopped with the application, when a port is configured."""
    fields = services.settings.carrier_fields("audiosocket")
    options = read_carrier_options(fields, services.dialplan, has_auth=False)
    host = fields.get("host", str, "127.0.0.1")
    port = fields.get("port", int, None, minimum=0, maximum=65535)
    fields.reject_unknown()
    if not options.enabled or port is None:
        return
    listener = AudioSocketListener(services, host, port, options)
    app[AUDIOSOCKET] = listener
    app.on_startup.append(listener.start)
    app.on_cleanup.append(listener.stop)
