"""Media connections opened exactly as each carrier opens them (its webhook or handshake, credentials and opening
messages, from voicebot/simulator), for tests that then do what no well-behaved carrier does: send a message
over the size limit, send audio much faster than real time, or stop reading what the server sends.

Unlike ``SimulatedCall`` nothing here keeps real time or plays the bot's audio: the test drives the connection.
"""

from __future__ import annotations

import asyncio
import os
import socket

import aiohttp
import numpy as np

from voicebot.audio import FRAME_MS, FRAME_SAMPLES
from voicebot.simulator.asterisk import AsteriskProtocol
from voicebot.simulator.audiosocket import AudioSocketProtocol, TcpConnection
from voicebot.simulator.caller import CarrierProtocol, MediaConnection, PlayAudio, ProtocolViolation
from voicebot.simulator.exotel import ExotelProtocol
from voicebot.simulator.freeswitch import FreeSwitchProtocol
from voicebot.simulator.jambonz import JambonzProtocol
from voicebot.simulator.plivo import PlivoProtocol
from voicebot.simulator.signalwire import SignalWireProtocol
from voicebot.simulator.telnyx import TelnyxProtocol
from voicebot.simulator.twilio import TwilioProtocol
from voicebot.simulator.vonage import VonageProtocol
from voicebot.simulator.wsclient import open_websocket

from conftest import AUTH_TOKEN, CARRIER_SECRETS

# Every carrier's secret (the ones conftest.CARRIER_SECRETS leaves to each carrier's own test file, too).
ALL_CARRIER_SECRETS = {
    **CARRIER_SECRETS,
    "TELNYX_STREAM_TOKEN": "test-telnyx-stream-token-2f61",
    "PLIVO_STREAM_SECRET": "testplivosecreta83c",
    "EXOTEL_STREAM_PASSWORD": "test-exotel-password-64de",
    "SIGNALWIRE_SIGNING_KEY": "PSK_test_signing_key_limits",
}
WEBSOCKET_CARRIERS = ("twilio", "signalwire", "telnyx", "plivo", "exotel", "vonage", "jambonz", "asterisk",
                      "freeswitch")


def carrier_protocol(carrier: str, base_url: str, *, to: str, port: int | None = None,
                     **options) -> CarrierProtocol:
    """``carrier``'s side of one call, with the credentials the server was given (ALL_CARRIER_SECRETS in the
    environment, Twilio's conftest.AUTH_TOKEN); ``port``: AudioSocket's listener; ``options``: the carrier
    protocol's own (Vonage's ``rate``, …)."""
    env = os.environ.get
    if carrier == "twilio":
        return TwilioProtocol(base_url, to=to, auth_token=AUTH_TOKEN)
    if carrier == "signalwire":
        return SignalWireProtocol(base_url, to=to, signing_key=env("SIGNALWIRE_SIGNING_KEY"))
    if carrier == "telnyx":
        return TelnyxProtocol(base_url, to=to, token=env("TELNYX_STREAM_TOKEN"))
    if carrier == "plivo":
        return PlivoProtocol(base_url, to=to, secret=env("PLIVO_STREAM_SECRET"))
    if carrier == "exotel":
        return ExotelProtocol(base_url, to=to, password=env("EXOTEL_STREAM_PASSWORD"))
    if carrier == "audiosocket":
        return AudioSocketProtocol(base_url, port=port)
    cls = {"vonage": VonageProtocol, "jambonz": JambonzProtocol, "asterisk": AsteriskProtocol,
           "freeswitch": FreeSwitchProtocol}[carrier]
    return cls(base_url, to=to, **options)


class CarrierConnection:
    """One open media connection, its opening messages sent. What the server sends is decoded as the carrier
    would (``bot_samples``: bot audio received) unless reading is paused."""

    def __init__(self, protocol: CarrierProtocol, connection: MediaConnection,
                 session: aiohttp.ClientSession | None = None) -> None:
        self.protocol = protocol
        self.connection = connection
        self._session = session          # ours to close
        self.bot_samples = 0
        self.bot_messages = 0
        self._frames_sent = 0
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, carrier: str, base_url: str, *, to: str, port: int | None = None,
                   receive_buffer: int | None = None, **options) -> "CarrierConnection":
        """``receive_buffer``: this end's socket receive buffer (SO_RCVBUF, set before connecting), small for a
        carrier that is to stop reading and back the server up soon; ``options``: the carrier protocol's."""
        protocol = carrier_protocol(carrier, base_url, to=to, port=port, **options)
        async with aiohttp.ClientSession() as http:
            target = await protocol.setup(http)
        session = None
        if isinstance(protocol, AudioSocketProtocol):
            sock = _socket(socket.AF_INET, receive_buffer)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (protocol.host, protocol.port))
            connection: MediaConnection = TcpConnection(*await asyncio.open_connection(sock=sock))
        else:
            if receive_buffer is not None:
                session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(
                    socket_factory=lambda info: _socket(info[0], receive_buffer)))
            connection = await open_websocket(target, session=session, timeout_s=10.0,
                                              max_message_bytes=64 * 2**20)
        for message in protocol.opening_messages():
            connection.send_nowait(message)
        return cls(protocol, connection, session)

    @property
    def carrier(self) -> str:
        return self.protocol.name

    @property
    def close_code(self) -> int | None:
        return self.connection.close_code

    @property
    def close_reason(self) -> str | None:
        return self.connection.close_reason

    @property
    def closed(self) -> bool:
        return self._reader.done()

    async def _read(self) -> None:
        try:
            async for message in self.connection:
                try:
                    events = self.protocol.decode(message)
                except ProtocolViolation:
                    continue
                for event in events:
                    if isinstance(event, PlayAudio):
                        self.bot_messages += 1
                        self.bot_samples += len(event.pcm)
        except ConnectionError:
            pass

    def audio_messages(self, pcm: np.ndarray) -> list[str | bytes]:
        """The carrier's media messages for ``pcm`` (8 kHz int16, a whole number of 20 ms frames), numbered
        and timestamped on from the last ones, as the carrier would send them."""
        messages: list[str | bytes] = []
        for start in range(0, len(pcm) - FRAME_SAMPLES + 1, FRAME_SAMPLES):
            index = self._frames_sent
            self._frames_sent += 1
            messages += self.protocol.encode_frame(pcm[start:start + FRAME_SAMPLES], index, index * FRAME_MS)
        return messages

    def one_message_of(self, pcm: np.ndarray) -> str | bytes:
        """All of ``pcm`` in a single media message of the carrier's format (however long: a message no
        carrier would send; a carrier that batches frames gets it as its batch's last)."""
        for _ in range(16):
            index = self._frames_sent
            self._frames_sent += 1
            messages = self.protocol.encode_frame(pcm, index, index * FRAME_MS)
            if messages:
                return max(messages, key=len)
        raise AssertionError(f"{self.carrier}: encode_frame made no message")

    def stop_reading(self) -> None:
        """Read nothing more from the server, as a carrier that has hung would: what the server sends fills
        this end's receive window (small with ``open(receive_buffer=…)``), then backs up in the server's
        socket. (Shrinking the receive buffer now, below the window already advertised, would make the kernel
        drop the server's segments, and with them the acknowledgements of what this end sends.)"""
        transport = getattr(self.connection, "_transport", None) or self.connection.writer.transport
        transport.pause_reading()

    def send(self, messages: list[str | bytes] | str | bytes) -> None:
        for message in messages if isinstance(messages, list) else [messages]:
            self.connection.send_nowait(message)

    async def send_speech(self, pcm: np.ndarray, *, speed: float = 1.0, tick_s: float = FRAME_MS / 1000) -> int:
        """Send ``pcm`` as the carrier's media messages, ``speed`` × real time (10: a second of audio every
        100 ms), on an absolute schedule; returns the 20 ms frames sent."""
        loop = asyncio.get_running_loop()
        per_tick = round(speed * tick_s * 1000 / FRAME_MS) * FRAME_SAMPLES
        t0, sent = loop.time(), 0
        for tick, start in enumerate(range(0, len(pcm), per_tick)):
            chunk = pcm[start:start + per_tick]
            self.send(self.audio_messages(chunk))
            sent += len(chunk) // FRAME_SAMPLES
            await asyncio.sleep(max(0.0, t0 + (tick + 1) * tick_s - loop.time()))
        return sent

    async def wait_closed(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)

    async def close(self) -> None:
        try:
            self.send(self.protocol.closing_messages())
        except ConnectionError:
            pass
        try:
            await self.connection.close()
        except Exception:  # noqa: BLE001 - the server may have dropped it already
            pass
        try:
            await asyncio.wait_for(self._reader, 5.0)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            self._reader.cancel()
        if self._session is not None:
            await self._session.close()


def _socket(family: int, receive_buffer: int | None) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    return sock
