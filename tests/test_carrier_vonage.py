"""Vonage end to end: simulated Vonage WebSocket → real server → StepFun emulator."""

from __future__ import annotations

import asyncio
import json

import pytest
import structlog
import websockets

from voicebot.simulator.caller import Hangup
from voicebot.simulator.vonage import simulate_call
from voicebot.telephony.base import Dtmf
from voicebot.telephony.vonage import VonageSession

from carrier_checks import barge_in, conversation, malformed_input, refused_before_audio, transcript_of
from conftest import CARRIER_SECRETS, EN, ZH
from metrics_scrape import delta, scrape

TOKEN = CARRIER_SECRETS["VONAGE_WS_TOKEN"]


async def test_conversation_in_exact_20ms_binary_frames_at_16k(carrier_stack, caller_en):
    result = await conversation(carrier_stack, simulate_call, caller_en, rate=16000)
    assert {size for _, size in result.media_received} == {640}


@pytest.mark.parametrize("rate", [8000, 24000])
async def test_greeting_at_the_other_rates_and_persona_by_number(carrier_stack, rate):
    result = await simulate_call(carrier_stack.url, to=ZH, rate=rate, max_duration_s=15,
                                 script=[Hangup(after_bot_done=True, pause_s=0.2)])
    assert result.protocol_errors == [] and result.segments[0].played_ms > 2000
    assert {size for _, size in result.media_received} == {rate // 50 * 2}     # 320 / 960 bytes
    assert (await transcript_of(carrier_stack))[0]["persona"] == "test-zh"


async def test_barge_in_clears_vonage_and_truncates_at_what_was_played(carrier_stack, caller_en, caller_interrupt):
    await barge_in(carrier_stack, simulate_call, caller_en, caller_interrupt)


async def test_authorization_header_is_required(carrier_stack):
    assert await refused_before_audio(carrier_stack, simulate_call, authorization="Bearer wrong") == "401"
    assert await refused_before_audio(carrier_stack, simulate_call, authorization=None) == "401"
    result = await simulate_call(carrier_stack.url, to=EN, authorization=TOKEN, max_duration_s=2,  # bare token
                                 script=[Hangup(at_s=1.5)])
    assert result.media_received
    assert len(carrier_stack.emulator.sessions) == 1


@pytest.fixture
def no_token(monkeypatch):
    monkeypatch.delenv("VONAGE_WS_TOKEN", raising=False)


async def test_without_a_token_configured_every_stream_is_refused(no_token, stack):
    assert await refused_before_audio(stack, simulate_call, authorization="Bearer anything") == "401"


async def test_malformed_messages_hurt_only_their_own_call(carrier_stack, caller_en):
    connected = json.dumps({"event": "websocket:connected", "content-type": "audio/l16;rate=8000", "to": EN})
    url = carrier_stack.url.replace("http://", "ws://") + "/vonage/media"
    await malformed_input(
        carrier_stack, simulate_call, caller_en, url=url, headers={"Authorization": f"Bearer {TOKEN}"},
        connections=[[b"\x00" * 320, connected, "{not json", b"\x00" * 321, json.dumps({"event": "websocket:notify"}),
                      json.dumps({"event": "dance"}), *[b"\x00\x01" * 160] * 25]],
        expected=["binary audio of 320 bytes before the websocket:connected message", "not JSON",
                  "321 bytes is not a whole number", "'payload' missing", "unknown event 'dance'"])


async def test_a_10_mb_binary_frame_gets_a_1009_close_frame(carrier_stack):
    """A real WebSocket client sends one 10 MB binary message on a live call: it reads the 1009 close frame
    (the server reads past the message until the client's close instead of closing the socket with the message
    unread, which resets the connection and loses the close frame), the problem is logged and the refusal
    counted as a limit."""
    connected = json.dumps({"event": "websocket:connected", "content-type": "audio/l16;rate=16000", "to": EN})
    url = carrier_stack.url.replace("http://", "ws://") + "/vonage/media"
    before = await scrape(carrier_stack.url)
    with structlog.testing.capture_logs() as logs:
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"},
                                      max_size=None, max_queue=4) as ws:
            await ws.send(connected)
            # Not reading for a while, as a busy client: the greeting's messages fill its queue and it stops
            # reading the socket, so the close frame waits in its socket buffer while it sends the 10 MB.
            await asyncio.sleep(0.5)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.send(b"\x00\x01" * 5_000_000)
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
        await carrier_stack.idle()
    assert closed.value.rcvd is not None, "no close frame reached the client"
    assert closed.value.rcvd.code == 1009 and "over the 65536-byte limit" in closed.value.rcvd.reason
    # Our refusal, logged as such with the size refused (not as the carrier's protocol error).
    assert [entry for entry in logs if entry["event"] == "carrier_protocol_error"] == []
    (refused,) = [entry for entry in logs if entry["event"] == "media_message_too_big"]
    assert refused["size"] >= 65536 and refused["limit"] == 65536 and refused["closed_with"] == 1009
    assert delta(await scrape(carrier_stack.url), before, "voicebot_stream_refusals_total", carrier="vonage",
                 reason="limit") == 1


def test_dtmf_in_either_documented_shape():
    session = VonageSession(lambda text: None, lambda data: None)
    session.handle_text(json.dumps({"event": "websocket:connected", "content-type": "audio/l16;rate=16000"}))
    for msg in ({"event": "websocket:dtmf", "digit": "5", "duration": 260},
                {"event": "websocket:dtmf", "dtmf": {"digit": "5", "duration": 260}}):
        assert session.handle_text(json.dumps(msg)) == [Dtmf("5")]
