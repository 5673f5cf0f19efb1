"""Asterisk chan_websocket end to end: simulated Asterisk → real server → StepFun emulator."""

from __future__ import annotations

import json

import numpy as np
import structlog

from voicebot.audio.g711 import ulaw_encode
from voicebot.simulator.asterisk import AsteriskProtocol, simulate_call
from voicebot.simulator.caller import Hangup, SimulatedCall
from voicebot.simulator.l16 import basic_auth
from voicebot.telephony.asterisk import AsteriskSession
from voicebot.telephony.base import Dtmf

from carrier_checks import barge_in, conversation, malformed_input, refused_before_audio, transcript_of
from conftest import CARRIER_SECRETS, EN, SHORT, ZH

AUTH = {"Authorization": basic_auth("asterisk", CARRIER_SECRETS["ASTERISK_WS_PASSWORD"])}


def media_url(stack, query: str = "") -> str:
    return stack.url.replace("http://", "ws://") + "/asterisk/media" + query


async def test_conversation_in_ulaw_with_json_control(carrier_stack, caller_en):
    result = await conversation(carrier_stack, simulate_call, caller_en, format="ulaw", control="json")
    assert {size for _, size in result.media_received} == {160}      # one optimal frame per message


async def test_plain_text_control_slin16_and_persona_from_the_dial_string(carrier_stack):
    result = await simulate_call(carrier_stack.url, to=None, format="slin16", control="plain-text",
                                 uri_params={"to": ZH}, max_duration_s=15,
                                 script=[Hangup(after_bot_done=True, pause_s=0.2)])
    assert result.protocol_errors == [] and result.segments[0].played_ms > 2000 and result.marks_echoed > 5
    assert {size for _, size in result.media_received} == {640}
    assert (await transcript_of(carrier_stack))[0]["persona"] == "test-zh"


async def test_barge_in_flushes_media_and_xoff_holds_media_and_marks_until_xon(carrier_stack, caller_en,
                                                                               caller_interrupt):
    # Asterisk's queue reports XOFF at 4 frames and XON below 2: with a 100 ms lead the server hits it all
    # the time. Nothing may arrive after XOFF (the simulated Asterisk drops and reports it), nothing may be
    # lost (the greeting plays in one piece), FLUSH_MEDIA clears the reply and "heard" stays right (±40 ms).
    result = await barge_in(carrier_stack, simulate_call, caller_en, caller_interrupt, xoff_frames=4, xon_frames=2)
    flow = [e.detail for e in result.events("flow_control_sent")]
    assert sum("MEDIA_XOFF" in d for d in flow) > 20 and sum("MEDIA_XON" in d for d in flow) > 20
    greeting = result.segments[0]
    assert greeting.ended_by == "drained" and greeting.played_ms > 3500


async def test_server_hangs_up_with_the_hangup_command(carrier_stack):
    protocol = AsteriskProtocol(carrier_stack.url, to=SHORT)          # persona with max_call_seconds: 2
    received = []
    control = protocol.control
    protocol.control = lambda text, excerpt: received.append(json.loads(text)["command"]) or control(text, excerpt)
    result = await SimulatedCall(protocol, [Hangup(at_s=8)], max_duration_s=10).run()
    assert result.end_reason == "server_closed" and received[-1] == "HANGUP"


async def test_basic_auth_is_required(carrier_stack):
    assert await refused_before_audio(carrier_stack, simulate_call, password="wrong") == "401"
    assert await refused_before_audio(carrier_stack, simulate_call, password=None) == "401"
    assert carrier_stack.emulator.sessions == []


async def test_unsupported_format_closes_the_stream_with_a_clear_error(carrier_stack):
    with structlog.testing.capture_logs() as logs:
        result = await simulate_call(carrier_stack.url, to=EN, format="ulaw", max_duration_s=3,
                                     script=[Hangup(at_s=2)])
        protocol = AsteriskProtocol(carrier_stack.url, to=EN)
        protocol.opening_messages = lambda: [json.dumps({"event": "MEDIA_START", "format": "opus",
                                                         "optimal_frame_size": 0, "ptime": 20})]
        refused = await SimulatedCall(protocol, [Hangup(at_s=2)], max_duration_s=3).run()
    assert result.media_received                                       # the ulaw call was fine
    assert refused.end_reason == "server_closed" and refused.close_code == 1008 and refused.media_received == []
    problems = [e["problem"] for e in logs if e["event"] == "carrier_protocol_error"]
    assert any("format 'opus' is not supported" in p for p in problems)


async def test_malformed_messages_hurt_only_their_own_call(carrier_stack, caller_en):
    start = json.dumps({"event": "MEDIA_START", "connection_id": "c1", "channel_id": "1.1", "format": "ulaw",
                        "optimal_frame_size": 160, "ptime": 20})
    await malformed_input(
        carrier_stack, simulate_call, caller_en, url=media_url(carrier_stack, f"?to={EN}"), headers=AUTH,
        connections=[[b"\xff" * 160, "DTMF_END digit:1", start, "", json.dumps({"event": "MEDIA_MARK_PROCESSED"}),
                      "MEDIA_DANCE now", *[b"\xff" * 160] * 25]],
        expected=["binary media of 160 bytes before MEDIA_START", "DTMF_END before MEDIA_START", "empty text frame",
                  "MEDIA_MARK_PROCESSED without a correlation_id", "unknown event 'MEDIA_DANCE'"])


def test_dtmf_in_json_and_plain_text():
    for start, dtmf in (('{"event":"MEDIA_START","format":"ulaw","optimal_frame_size":160}',
                         '{"event":"DTMF_END","channel_id":"1.1","digit":"9"}'),
                        ("MEDIA_START connection_id:c format:ulaw optimal_frame_size:160 ptime:20",
                         "DTMF_END digit:9")):
        session = AsteriskSession(lambda text: None, lambda data: None)
        session.handle_text(start)
        assert session.handle_text(dtmf) == [Dtmf("9")]


def test_xoff_holds_media_and_marks_in_order_and_a_flush_drops_what_is_held():
    sent: list = []
    session = AsteriskSession(sent.append, sent.append)
    session.handle_text('{"event":"MEDIA_START","format":"ulaw","optimal_frame_size":160}')
    frame = np.zeros(160, np.int16)
    session.handle_text('{"event":"MEDIA_XOFF"}')
    session.send_audio(frame)
    session.send_mark("vb1")
    session.send_audio(frame)
    assert sent == []
    session.handle_text('{"event":"MEDIA_XON"}')
    assert [type(m) for m in sent] == [bytes, str, bytes]
    assert json.loads(sent[1]) == {"command": "MARK_MEDIA", "correlation_id": "vb1"}
    sent.clear()
    session.handle_text('{"event":"MEDIA_XOFF"}')
    session.send_audio(frame)
    session.send_clear()
    session.send_audio(frame)                  # after the flush Asterisk's queue is empty again
    assert json.loads(sent[0]) == {"command": "FLUSH_MEDIA"} and sent[1:] == [ulaw_encode(frame)]
