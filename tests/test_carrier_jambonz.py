"""jambonz end to end: simulated jambonz ``listen`` → real server → StepFun emulator."""

from __future__ import annotations

import json

import numpy as np
import websockets

from voicebot.simulator.caller import Hangup
from voicebot.simulator.jambonz import simulate_call
from voicebot.simulator.l16 import basic_auth
from voicebot.telephony.base import Dtmf
from voicebot.telephony.jambonz import JambonzSession

from carrier_checks import barge_in, conversation, malformed_input, refused_before_audio, transcript_of
from conftest import CARRIER_SECRETS, EN

AUTH = {"Authorization": basic_auth("voicebot", CARRIER_SECRETS["JAMBONZ_WS_PASSWORD"])}


def media_url(stack) -> str:
    return stack.url.replace("http://", "ws://") + "/jambonz/media"


async def test_conversation_over_binary_l16_16k(carrier_stack, caller_en):
    result = await conversation(carrier_stack, simulate_call, caller_en, rate=16000)
    assert {size for _, size in result.media_received} == {640}


async def test_barge_in_kills_audio_and_cleared_marks_do_not_count_as_heard(carrier_stack, caller_en,
                                                                           caller_interrupt):
    result = await barge_in(carrier_stack, simulate_call, caller_en, caller_interrupt)
    # The killAudio flushed marks; jambonz reported them "cleared", which the server did not take as played
    # (barge_in checked the truncation against what was really played).
    assert any(m.cleared for m in result.marks)


async def test_server_selects_the_subprotocol_and_persona_comes_from_metadata(carrier_stack):
    attributes = json.dumps({"callSid": "c-1", "from": "+15005550006", "to": EN, "sampleRate": 8000,
                             "mixType": "mono", "metadata": {"persona": "test-zh"}})
    async with websockets.connect(media_url(carrier_stack), subprotocols=["audio.jambonz.org"],
                                  additional_headers=AUTH) as ws:
        assert ws.subprotocol == "audio.jambonz.org"
        await ws.send(attributes)
        first = [await ws.recv() for _ in range(3)]
        assert json.loads(first[0])["type"] == "mark" and isinstance(first[1], bytes)  # the greeting, binary
    assert (await transcript_of(carrier_stack))[0]["persona"] == "test-zh"


async def test_unknown_persona_is_refused(carrier_stack):
    result = await simulate_call(carrier_stack.url, to=EN, metadata={"persona": "nobody"}, max_duration_s=3,
                                 script=[Hangup(at_s=2)])
    assert result.close_code == 1008 and result.media_received == []


async def test_basic_auth_is_required(carrier_stack):
    assert await refused_before_audio(carrier_stack, simulate_call, password="wrong") == "401"
    assert await refused_before_audio(carrier_stack, simulate_call, password=None) == "401"
    assert await refused_before_audio(carrier_stack, simulate_call, username="admin") == "401"
    assert carrier_stack.emulator.sessions == []


async def test_malformed_messages_hurt_only_their_own_call(carrier_stack, caller_en):
    attributes = json.dumps({"callSid": "c-2", "from": "+15005550006", "to": EN, "sampleRate": 8000})
    await malformed_input(
        carrier_stack, simulate_call, caller_en, url=media_url(carrier_stack), headers=AUTH,
        connections=[[b"\x00" * 320, json.dumps({"from": "x"}), attributes, "[1, 2]",
                      json.dumps({"type": "mark", "data": {"name": "vb1", "event": "played"}}),
                      json.dumps({"type": "dance"}), *[b"\x00\x01" * 160] * 25]],
        expected=["binary audio of 320 bytes before the call attributes", "'callSid' missing",
                  "JSON but not an object", "neither 'playout' nor 'cleared'", "unknown message type 'dance'"])


def test_dtmf_and_stereo_input_take_the_caller():
    session = JambonzSession(lambda text: None, lambda data: None)
    session.handle_text(json.dumps({"callSid": "c-3", "sampleRate": 8000, "mixType": "stereo"}))
    assert session.handle_text(json.dumps({"event": "dtmf", "dtmf": "#", "duration": 100})) == [Dtmf("#")]
    caller, bot = np.full(160, 1000, np.int16), np.full(160, -7, np.int16)
    [audio] = session.handle_bytes(np.stack([caller, bot], axis=1).astype("<i2").tobytes())
    assert np.array_equal(audio.pcm, caller)
