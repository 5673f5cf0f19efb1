"""Media connections opened exactly as each carrier opens them (its webhook or handshake, credentials and opening
messages, from voicebot/simulator), for tests that then do what no well-behaved carrier does: send a message
over the size limit, send audio much faster than real time, or stop reading what the server sends.

Unlike ``SimulatedCall`` nothing here keeps real time or plays the bot's audio: the test drives the connection.
"""

from __future__ import annotations

import asyncio
import os

import aiohttp
import numpy as np

from voicebot.audio import FRAME_MS, FRAME_SAMPLES
from voicebot.simulator.asterisk import AsteriskProtocol
from voicebot.simulator.audiosocket import AudioSocketProtocol
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


def carrier_protocol(carrier: str, base_url: str, *, to: str, port: int | None = None) -> CarrierProtocol:
    """``carrier``'s side of one call, with the credentials the server was given (ALL_CARRIER_SECRETS in the
    environment, Twilio's conftest.AUTH_TOKEN); ``port``: AudioSocket's listener."""
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
    return cls(base_url, to=to)


class CarrierConnection:
    """One open media connection, its opening messages sent. What the server sends is decoded as the carrier
    would (``bot_samples``: bot audio received) unless reading is paused."""

    def __init__(self, protocol: CarrierProtocol, connection: MediaConnection) -> None:
        self.protocol = protocol
        self.connection = connection
        self.bot_samples = 0
        self.bot_messages = 0
        self._frames_sent = 0
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, carrier: str, base_url: str, *, to: str, port: int | None = None,
                   http: aiohttp.ClientSession | None = None) -> "CarrierConnection":
        protocol = carrier_protocol(carrier, base_url, to=to, port=port)
        own = http is None
        session = http or aiohttp.ClientSession()
        try:
            target = await protocol.setup(session)
        finally:
            if own:
                await session.close()
        connection = (await protocol.connect(target, 10.0)
                      or await open_websocket(target, session=None, timeout_s=10.0, max_message_bytes=64 * 2**20))
        for message in protocol.opening_messages():
            connection.send_nowait(message)
        return cls(protocol, connection)

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
