"""Plivo end to end: simulated Plivo bidirectional stream → real server → StepFun emulator."""

from __future__ import annotations

import base64
import json


from voicebot.simulator.caller import Hangup
from voicebot.simulator.plivo import simulate_call

from carrier_checks import barge_in, conversation, malformed_input, refused_before_audio, secret_in_env, transcript_of
from conftest import EN

SECRET = "plivoStreamSecret9d2"

carrier_secret = secret_in_env("PLIVO_STREAM_SECRET", SECRET)


async def test_call_heard_both_ways_over_l16_with_the_number_in_extra_headers(stack, caller_en):
    result = await conversation(stack, simulate_call, caller_en)
    assert {size for _, size in result.media_received} == {320}     # 20 ms of 8 kHz L16 per playAudio
    records = await transcript_of(stack)
    assert records[0]["to_number"] == EN and records[0]["persona"] == "test-en"


async def test_barge_in_over_mulaw_clears_plivo_and_truncates_at_what_it_played(stack, caller_en, caller_interrupt):
    result = await barge_in(stack, simulate_call, caller_en, caller_interrupt, content_type="audio/x-mulaw;rate=8000")
    assert {size for _, size in result.media_received} == {160}
    # Checkpoints were pending at the clear; Plivo never answers those, and the truncation above still held.
    assert [m for m in result.marks if m.cleared]


async def test_persona_by_name_from_the_stream_url_with_the_secret_in_its_path(stack):
    result = await simulate_call(stack.url, to=None, secret_in="path", query="persona=test-zh",
                                 content_type="audio/x-l16;rate=16000", max_duration_s=10,
                                 script=[Hangup(after_bot_done=True, pause_s=0.2)])
    assert result.protocol_errors == [] and result.end_reason == "hangup"
    assert {size for _, size in result.media_received} == {640}     # 20 ms of 16 kHz L16
    records = await transcript_of(stack)
    assert records[0]["persona"] == "test-zh" and records[0]["to_number"] is None


async def test_stream_secret_is_required_before_any_audio(stack):
    assert await refused_before_audio(stack, simulate_call, secret="wrong", secret_in="path") == "401"
    assert await refused_before_audio(stack, simulate_call, secret="wrong") == "1008"
    assert await refused_before_audio(stack, simulate_call, secret=None) == "1008"
    assert stack.emulator.sessions == []


async def test_malformed_messages_hurt_only_their_own_call(stack, caller_en):
    stream = "87654321-4321-4321-4321-cba987654321"

    def media(payload: str | None = None, raw: bytes = b"\x00\x01" * 160) -> str:
        return json.dumps({"event": "media", "sequenceNumber": 2, "streamId": stream, "media": {
            "track": "inbound", "timestamp": "1705312200000", "chunk": 1,
            "payload": base64.b64encode(raw).decode() if payload is None else payload}})

    start = json.dumps({"event": "start", "sequenceNumber": 1, "start": {
        "callId": "12345678-1234-1234-1234-123456789abc", "streamId": stream, "accountId": "MA1",
        "tracks": ["inbound"], "mediaFormat": {"encoding": "audio/x-l16", "sampleRate": 8000}},
        "extra_headers": f"to={EN.lstrip('+')},token={SECRET}"})
    first = [media(), start, "{not json", media(payload="!!!not base64!!!"),
             json.dumps({"event": "stop", "streamId": stream}),                      # not a Plivo event
             json.dumps({"event": "playedStream", "streamId": stream}), *[media() for _ in range(25)]]
    second = [start, media(raw=b"\x00" * 161), json.dumps({"event": "media", "streamId": stream}),
              json.dumps({"event": "dtmf", "streamId": stream, "dtmf": {"digit": 5}}), *[media() for _ in range(25)]]
    await malformed_input(stack, simulate_call, caller_en, url=stack.url.replace("http", "ws") + "/plivo/media",
                          headers=None, connections=[first, second],
                          expected=["media before start", "not JSON", "not valid base64", "unknown event 'stop'",
                                    "playedStream: field 'name' missing", "161 bytes is not a whole number",
                                    "field 'media' missing", "dtmf.dtmf: field 'digit' missing or not a str"])
