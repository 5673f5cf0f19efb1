"""FreeSWITCH end to end: simulated mod_audio_fork / mod_audio_stream → real server → StepFun emulator."""

from __future__ import annotations

import json

from voicebot.simulator.caller import Hangup
from voicebot.simulator.freeswitch import simulate_call

from carrier_checks import barge_in, conversation, malformed_input, refused_before_audio, transcript_of
from conftest import CARRIER_SECRETS, EN, ZH
from paced_checks import barge_in_without_flush

SECRET = CARRIER_SECRETS["FREESWITCH_WS_SECRET"]


async def test_mod_audio_fork_conversation_at_16k(carrier_stack, caller_en):
    result = await conversation(carrier_stack, simulate_call, caller_en, module="fork", rate=16000)
    assert {size for _, size in result.media_received} == {640}


async def test_mod_audio_fork_barge_in_kills_audio(carrier_stack, caller_en, caller_interrupt):
    await barge_in(carrier_stack, simulate_call, caller_en, caller_interrupt, module="fork")


async def test_mod_audio_stream_barge_in_without_flush(carrier_stack, caller_en, caller_interrupt):
    result = await barge_in_without_flush(carrier_stack, simulate_call, caller_en, caller_interrupt, module="stream")
    assert result.marks == []                                     # mod_audio_stream has no marks


async def test_mod_audio_stream_without_metadata_uses_the_url_and_config(carrier_stack):
    result = await simulate_call(carrier_stack.url, to=EN, module="stream", metadata=None, query={"to": ZH},
                                 max_duration_s=15, script=[Hangup(after_bot_done=True, pause_s=0.2)])
    assert result.protocol_errors == [] and result.segments[0].played_ms > 2000
    assert {size for _, size in result.media_received} == {320}  # carriers.freeswitch.sample_rate: 8000
    records = await transcript_of(carrier_stack)
    assert records[0]["persona"] == "test-zh" and records[0]["to_number"] == ZH


async def test_secret_is_required_as_bearer_or_basic(carrier_stack):
    for module in ("fork", "stream"):
        assert await refused_before_audio(carrier_stack, simulate_call, module=module, secret="wrong") == "401"
        assert await refused_before_audio(carrier_stack, simulate_call, module=module, secret=None) == "401"
    assert carrier_stack.emulator.sessions == []


async def test_malformed_messages_hurt_only_their_own_call(carrier_stack, caller_en):
    url = carrier_stack.url.replace("http://", "ws://") + "/freeswitch/media"
    await malformed_input(
        carrier_stack, simulate_call, caller_en, url=url, headers={"Authorization": f"Bearer {SECRET}"},
        connections=[[json.dumps({"to": EN, "sampleRate": "16k"}), b"\x00" * 641, "{not json",
                      json.dumps({"type": "mark", "data": {}}), json.dumps({"event": "dtmf"}),
                      *[b"\x00\x01" * 320] * 25]],
        expected=["641 bytes is not a whole number", "not JSON", "'name' missing", "dtmf: no DTMF digit"])
