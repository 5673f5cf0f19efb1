"""Every queue between the carrier, the call, the engine and StepFun is bounded: a peer that stops reading
(a hung StepFun, a carrier that takes no more audio) cannot make a call hold more than a stated bound, and
the call fails over or ends with a clear reason. Measured on the live buffers of real calls
(tests/call_buffers.py) through the real server, against the emulator's stall fault."""

from __future__ import annotations

import asyncio
import base64
import json
import socket

import numpy as np
import pytest
import structlog

from voicebot.audio import FRAME_SAMPLES
from voicebot.call import SWITCH_BUFFER_FRAMES
from voicebot.server import SERVICES
from voicebot.simulator.caller import Hangup, Say
from voicebot.simulator.twilio import simulate_twilio_call
from voicebot.stepfun import realtime as stepfun_realtime
from voicebot.telephony import transport as carrier_transport
from voicebot.wsserver import MAX_BUFFERED_BYTES as CARRIER_MAX_UNSENT

from call_buffers import BufferWatch
from carrier_wire import ALL_CARRIER_SECRETS, CarrierConnection
from conftest import AUTH_TOKEN, EN, NO_BARGE, until
from test_limits_media import assert_undisturbed, audiosocket_port, call_beside, long_speech  # noqa: F401

APPEND_BYTES = 1336     # one 20 ms append on the wire (stepfun/realtime.py)


@pytest.fixture(autouse=True)
def all_carrier_secrets(monkeypatch):
    for name, value in ALL_CARRIER_SECRETS.items():
        monkeypatch.setenv(name, value)


async def watch_call(stack, watches: dict[str, BufferWatch], *, every_s: float = 0.05) -> None:
    """Sample the buffers of every call of ``stack`` until cancelled (each call into its own watch)."""
    while True:
        for call in list(stack.app[SERVICES].calls):
            watches.setdefault(call.meta.carrier, BufferWatch()).sample(call)
        await asyncio.sleep(every_s)


def shrink_send_buffer(transport, size: int = 4096) -> None:
    """Make the kernel hold little of what ``transport`` sends, so that a peer not reading backs it up here
    within seconds instead of after megabytes."""
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def the_call_of(stack, carrier: str):
    return next((call for call in stack.app[SERVICES].calls if call.meta.carrier == carrier), None)


async def test_a_carrier_that_stops_reading_the_bots_audio_is_dropped_at_its_bound(stack, caller_en):
    """A Vonage connection (L16 at 24 kHz: 48 KB of bot audio a second) stops reading once its call is up;
    the caller's audio keeps coming and asks a question, so the bot's greeting and answer pile up in the
    server's socket until the carrier's backlog bound, where the connection is dropped and the call ends
    saying why. The call beside goes on."""
    watches: dict = {}
    beside = call_beside(stack, caller_en)
    conn = await CarrierConnection.open("vonage", stack.url, to=NO_BARGE, rate=24000, receive_buffer=4096)
    await until(lambda: the_call_of(stack, "vonage") is not None, what="the Vonage call")
    call = the_call_of(stack, "vonage")
    shrink_send_buffer(call._close_carrier.__self__.transport.ws.transport)
    conn.stop_reading()
    watching = asyncio.create_task(watch_call(stack, watches))
    audio = np.concatenate([np.zeros(6 * 8000, np.int16), caller_en, np.zeros(10 * 8000, np.int16)])
    with structlog.testing.capture_logs() as logs:
        sending = asyncio.create_task(conn.send_speech(audio))
        await asyncio.wait_for(call.finished(), 20)
        sending.cancel()
        result = await beside
    watching.cancel()
    await conn.close()
    peaks = watches["vonage"].peaks
    assert call.end_reason.startswith("carrier socket closed: peer is not reading ("), call.end_reason
    problems = [e["problem"] for e in logs if e["event"] == "carrier_protocol_error" and e["carrier"] == "vonage"]
    assert problems and problems[0].startswith("peer is not reading")
    assert 0.75 * CARRIER_MAX_UNSENT < peaks["carrier_unsent_bytes"] <= CARRIER_MAX_UNSENT + 960   # + one frame
    assert_undisturbed(result)


async def test_a_tcp_carrier_that_stops_reading_is_dropped_at_the_outboxs_bound(stack, audiosocket_port, caller_en,
                                                                                 monkeypatch):
    """AudioSocket (plain TCP: sends wait for the socket, behind the outbox) stops reading: the outbox holds the
    bot's audio up to its bound (made 16 KB here: 1 s of AudioSocket audio, so that the greeting and one
    answer overflow it), then the connection is dropped and the call ends saying why."""
    monkeypatch.setattr(carrier_transport, "MAX_BACKLOG_BYTES", 16 * 1024)
    watches: dict = {}
    conn = await CarrierConnection.open("audiosocket", stack.url, to=EN, port=audiosocket_port, receive_buffer=4096)
    await until(lambda: the_call_of(stack, "audiosocket") is not None, what="the AudioSocket call")
    call = the_call_of(stack, "audiosocket")
    shrink_send_buffer(call._close_carrier.__self__.transport.writer.transport)
    conn.stop_reading()
    watching = asyncio.create_task(watch_call(stack, watches))
    audio = np.concatenate([np.zeros(5 * 8000, np.int16), caller_en, np.zeros(12 * 8000, np.int16)])
    sending = asyncio.create_task(conn.send_speech(audio))
    await asyncio.wait_for(call.finished(), 25)
    sending.cancel()
    watching.cancel()
    await conn.close()
    assert call.end_reason.startswith("carrier socket closed: peer is not reading ("), call.end_reason
    assert 0 < watches["audiosocket"].peaks["outbox_bytes"] <= 16 * 1024
