"""The carrier's connection dropping in the middle of the bot's sentence (a TCP reset: no stop message, no
close frame), through the real server and emulator: the call ends at once with a clear reason, leaves its
transcript, record and recording, closes its StepFun session and requests, and nothing is left behind."""

from __future__ import annotations

import wave

import numpy as np

from voicebot.emulator.http_common import http_log
from voicebot.simulator.caller import Drop, Say
from voicebot.simulator.twilio import simulate_twilio_call

from conftest import AUTH_TOKEN
from faults import RECORDED, RECORDED_CHAIN, fault_stack, of_type, stored_record, transcript_of, warm_up  # noqa: F401
from leaks import settled


def recorded_channels(path) -> tuple[np.ndarray, np.ndarray]:
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 8000)
        stereo = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    return stereo[:, 0], stereo[:, 1]


def audible_ms(pcm: np.ndarray, threshold: int = 300) -> int:
    """Milliseconds of 20 ms blocks whose peak is above ``threshold``."""
    blocks = pcm[:len(pcm) // 160 * 160].reshape(-1, 160)
    return int((np.abs(blocks).max(axis=1) > threshold).sum()) * 20


async def dropped_mid_answer(stack, caller_en, to: str, after_bot_ms: float = 600):
    result = await simulate_twilio_call(
        stack.url, to=to, auth_token=AUTH_TOKEN, max_duration_s=40,
        script=[Say(caller_en, after_bot_done=True, pause_s=0.4, label="question"),
                Drop(after_bot_ms=after_bot_ms)])
    assert result.end_reason == "dropped" and result.protocol_errors == []
    question = result.utterances[0]
    answer = [s for s in result.segments if s.start_s > question.end_s]
    assert sum(s.played_ms for s in answer) >= after_bot_ms - 40, answer
    await stack.idle()
    records = transcript_of(stack, result)
    end = records[-1]
    dropped = "carrier socket closed: connection closed without a close frame"    # a TCP reset, no close frame
    assert end["type"] == "call_end", end
    assert end["end_reason"] == dropped and end["outcome"] == "caller_hung_up", end
    # The server saw the drop at once (its call lasted as long as the caller's, give or take setup).
    assert abs(end["duration_s"] - result.duration_s) < 1.0, (end["duration_s"], result.duration_s)
    record = await stored_record(stack, records[0]["call_id"])
    assert record.outcome == "caller_hung_up" and record.end_reason == dropped
    return result, records, record


async def test_drop_mid_sentence_on_the_realtime_engine(fault_stack, caller_en):
    stack = fault_stack
    before = await warm_up(stack, RECORDED)
    result, records, record = await dropped_mid_answer(stack, caller_en, RECORDED)
    session = stack.emulator.sessions[-1]
    assert session.closed and session.close_reason == "client closed (1000)"
    question = result.utterances[0]
    answer = [s for s in result.segments if s.start_s > question.end_s]
    # Cut off mid-sentence: audio still queued at the carrier, far less played than the answer holds.
    assert len(answer) == 1 and answer[0].ended_by == "hangup", answer
    assert answer[0].played_ms < session.responses[-1].planned_ms - 1000, answer
    # The recording holds the call up to the drop: the question, and the answer only as far as it played.
    caller, bot = recorded_channels(record.recording_path)
    assert abs(len(caller) / 8000 - result.duration_s) < 0.5
    answer_start = int(question.end_s * 8000)
    heard_ms, recorded_ms = audible_ms(result.heard[answer_start:]), audible_ms(bot[answer_start:])
    assert heard_ms >= 400 and abs(recorded_ms - heard_ms) <= 100, (heard_ms, recorded_ms)
    await settled(stack, before)


async def test_drop_mid_sentence_on_the_chain_while_tts_streams(fault_stack, caller_en):
    """The chain's TTS is slower than real time here, so the drop comes while a synthesis is still being
    streamed: that request is aborted, and its connection not kept."""
    stack = fault_stack
    before = await warm_up(stack, RECORDED_CHAIN)
    stack.emulator.faults.tts_chunk_delay_s = 0.3        # 200 ms of audio every 300 ms
    result, records, record = await dropped_mid_answer(stack, caller_en, RECORDED_CHAIN)
    tts = [r for r in http_log(stack.emulator) if r.endpoint.startswith("tts")]
    assert tts[-1].aborted or not tts[-1].done, tts[-1]
    assert of_type(records, "turn")[-1]["role"] in ("user", "assistant")
    assert record.recording_path is not None
    stack.emulator.faults.tts_chunk_delay_s = 0.0
    await settled(stack, before)
