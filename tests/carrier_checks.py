"""End-to-end checks every carrier's tests run the same way: one simulated call through the real server and
the StepFun emulator, judged on what the simulated carrier played and what the model received.

``simulate`` is a carrier's ``simulate_call(base_url, *, to, script, max_duration_s, **options)``."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import structlog
import websockets

from voicebot.simulator.caller import Hangup, Say
from voicebot.transcript import read_transcript

from conftest import EN, until

GREETING = "Hello, this is the test line of Acme. How can I help you today?"
# A caller-loop lateness this long explains an underrun: tests share the event loop (and two cores among
# several workers) with the server, so a stall of the loop starves the carrier's buffer of its ~100 ms lead.
# An underrun with the loop on time is the server's pacing going wrong.
LOOP_STALL_MS = 50


def assert_no_underrun_of_the_servers_making(result) -> None:
    """Bot audio ran dry mid-utterance only while the shared event loop was stalled (a busy machine)."""
    of_the_server = [u for u in result.underruns if u.loop_lag_ms < LOOP_STALL_MS]
    assert of_the_server == [], of_the_server


def secret_in_env(name: str, value: str):
    """An autouse fixture putting a carrier's secret in the environment before the server reads it."""

    @pytest.fixture(autouse=True)
    def carrier_secret(monkeypatch):
        monkeypatch.setenv(name, value)

    return carrier_secret


async def transcript_of(stack) -> list[dict]:
    await stack.idle()
    files = sorted(stack.transcripts.glob("*/*.jsonl"))
    assert len(files) == 1, files
    return read_transcript(files[0])


def rms_dbfs(pcm: np.ndarray) -> float:
    return 20 * np.log10(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)) / 32768 + 1e-12)


async def conversation(stack, simulate, caller_en, *, to: str = EN, **options):
    """Greeting heard to its end, the caller's question reaches the model, the reply is heard."""
    result = await simulate(stack.url, to=to, max_duration_s=30,
                            script=[Say(caller_en, after_bot_done=True, pause_s=0.4, label="question"),
                                    Hangup(after_bot_done=True, pause_s=0.5)], **options)
    assert result.protocol_errors == []
    assert result.end_reason == "hangup"
    assert result.first_bot_audio_s is not None and result.first_bot_audio_s < 1.5
    greeting = result.segments[0]
    assert greeting.played_ms >= 0.9 * len(GREETING) * 65 and greeting.ended_by == "drained"
    assert_no_underrun_of_the_servers_making(result)
    assert rms_dbfs(result.heard[result.heard != 0]) > -30
    assert result.marks_echoed > 10

    session = stack.emulator.sessions[0]
    audio24 = np.frombuffer(bytes(session.input_audio), dtype="<i2")
    assert abs(len(audio24) / 24000 - result.duration_s) < 0.6       # every caller frame arrived, none twice
    started = session.sent_of("input_audio_buffer.speech_started")[0]["audio_start_ms"]
    stopped = session.sent_of("input_audio_buffer.speech_stopped")[0]["audio_end_ms"]
    utterance = result.utterances[0]
    assert abs((stopped - started) / 1000 - (utterance.end_s - utterance.start_s)) < 0.5
    assert rms_dbfs(audio24[started * 24:stopped * 24]) > -35

    reply = [s for s in result.segments if s.start_s > utterance.end_s]
    assert reply and reply[0].played_ms > 0.8 * (utterance.end_s - utterance.start_s) * 1000
    records = await transcript_of(stack)
    assert records[0]["carrier"] == result.carrier
    turns = [r for r in records if r["type"] == "turn"]
    assert [t["role"] for t in turns] == ["assistant", "user", "assistant"]
    assert turns[0]["text"] == GREETING
    return result


async def barge_in(stack, simulate, caller_en, caller_interrupt, **options):
    """The caller talks over the reply: the carrier's playback is cleared once, and the model is truncated at
    what the simulated carrier actually played of it (±40 ms)."""
    result = await simulate(stack.url, to=EN, max_duration_s=40,
                            script=[Say(caller_en, after_bot_done=True, pause_s=0.4, label="question"),
                                    Say(caller_interrupt, barge_after_bot_ms=800, label="barge"),
                                    Hangup(after_bot_done=True, pause_s=0.5)], **options)
    assert result.protocol_errors == []
    assert len(result.clears) == 1
    session = stack.emulator.sessions[0]
    assert len(session.received_of("response.cancel")) == 1
    truncates = session.received_of("conversation.item.truncate")
    cut = [s for s in result.segments if s.ended_by == "clear"]
    assert len(truncates) == 1 and len(cut) == 1
    assert abs(truncates[0]["audio_end_ms"] - cut[0].played_ms) <= 40, (truncates[0], cut[0])
    assert result.barge_in_reaction_s[0] is not None and result.barge_in_reaction_s[0] < 0.5
    barge = [u for u in result.utterances if u.barge][0]
    after_clear = [s for s in result.segments if s.start_s > result.clears[0]]
    assert after_clear and after_clear[0].start_s > barge.end_s      # nothing of the cancelled reply after it
    records = await transcript_of(stack)
    assert [r["heard"][0]["heard_ms"] for r in records if r["type"] == "barge_in"] == [truncates[0]["audio_end_ms"]]
    return result


async def refused_before_audio(stack, simulate, **options) -> str:
    """A stream that fails authentication is refused -- HTTP 401 or close 1008 -- before any audio flows, and
    logged as our refusal with its reason (never as the carrier's protocol error: the 1008 the carrier echoes is
    ours); returns which of the two happened."""
    from voicebot.simulator.caller import StreamRefused

    with structlog.testing.capture_logs() as logs:
        try:
            result = await simulate(stack.url, to=EN, max_duration_s=4, script=[Hangup(at_s=3)], **options)
        except StreamRefused as exc:
            assert exc.status == 401, exc
            result = None
        await until(lambda: any(e["event"] == "media_stream_refused" for e in logs), what="the refusal logged")
        await asyncio.sleep(0.2)                      # the server's end of the connection is finished by then
    refusals = [e for e in logs if e["event"] == "media_stream_refused"]
    assert len(refusals) == 1 and refusals[0]["reason"] and refusals[0]["carrier"], logs
    assert [e for e in logs if e["event"] == "carrier_protocol_error"] == []
    if result is None:
        return "401"
    assert result.end_reason == "server_closed" and result.close_code == 1008, result.end_reason
    assert result.media_received == []
    assert refusals[0]["close_code"] == 1008 and refusals[0]["kind"] == "auth"
    return "1008"


async def malformed_input(stack, simulate, caller_en, *, url: str, headers: dict[str, str] | None,
                          connections: list[list[str]], expected: list[str], **options) -> list[str]:
    """Raw connections, one after the other, each send their frames (a valid start among garbage, then
    valid audio; at most five problems each, as the server logs five per connection) while a concurrent
    simulated call goes on undisturbed. Every ``expected`` text must appear in a logged protocol error;
    returns the logged problems."""
    good = asyncio.create_task(simulate(
        stack.url, to=EN, max_duration_s=30,
        script=[Say(caller_en, after_bot_done=True, pause_s=0.3), Hangup(after_bot_done=True, pause_s=0.3)],
        **options))
    with structlog.testing.capture_logs() as logs:
        for frames in connections:
            async with websockets.connect(url, additional_headers=headers or {}) as ws:
                for frame in frames:
                    await ws.send(frame)
                    await asyncio.sleep(0.02)
                bot_messages = 0
                try:
                    while True:
                        await asyncio.wait_for(ws.recv(), 0.5)
                        bot_messages += 1
                except asyncio.TimeoutError:
                    pass
            assert bot_messages > 0                   # the bad call itself still got its greeting
        result = await good
    problems = [entry["problem"] for entry in logs if entry["event"] == "carrier_protocol_error"]
    for text in expected:
        assert any(text in p for p in problems), (text, problems)
    assert result.protocol_errors == []
    assert len([s for s in result.segments if s.played_ms > 500]) >= 2   # greeting and reply heard
    return problems
