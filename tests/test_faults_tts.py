"""StepFun TTS failing under a chain call, through the real server, the emulator and a simulated Twilio caller:
slow (audio arriving slower than it plays), reset, stalled, or sending garbage in the middle of a sentence,
over HTTP (SSE) and over the WebSocket. The call goes on: a slow or garbled synthesis is heard whole, a lost
one is cut where it broke, noted in the transcript with its reason, and the caller's next question is
answered in full. Nothing is left behind (tasks, descriptors, sockets)."""

from __future__ import annotations

import asyncio

import pytest
import structlog

from voicebot.emulator.http_common import http_log
from voicebot.simulator.caller import Hangup, Say
from voicebot.simulator.twilio import simulate_twilio_call

from carrier_checks import assert_no_underrun_of_the_servers_making
from conftest import AUTH_TOKEN, CHAIN, CHAIN_WS, until
from faults import (TTS_HTTP, TTS_STALL_S, TTS_WS, fault_stack, of_type, reply_to, stored_record,  # noqa: F401
                    transcript_of, turns, warm_up)
from leaks import settled

SLOW_S = 0.3     # before each 200 ms chunk: the audio comes at 2/3 of real time
MS_PER_CHAR = 65     # the emulator's English speech
FAULT_AFTER_CHUNKS = 2     # 400 ms of the answer arrive before the fault


def tts_requests(stack):
    return [r for r in http_log(stack.emulator) if r.endpoint.startswith("tts")]


def arm_after_greeting(stack, **faults) -> asyncio.Task:
    """Set emulator ``faults`` once the call's greeting has been synthesized — every sentence of it: its
    TTS requests all done and no new one for 300 ms (the caller's question comes seconds later) — so that
    they hit the answer to the question."""
    known = len(tts_requests(stack))
    loop = asyncio.get_running_loop()

    async def arm() -> None:
        seen, since = None, loop.time()
        deadline = loop.time() + 20
        while True:
            requests = tts_requests(stack)[known:]
            state = (len(requests), sum(r.done for r in requests))
            if state != seen:
                seen, since = state, loop.time()
            elif state[0] and state[0] == state[1] and loop.time() - since >= 0.3:
                break
            assert loop.time() < deadline, "timed out waiting for the greeting's synthesis"
            await asyncio.sleep(0.01)
        for name, value in faults.items():
            setattr(stack.emulator.faults, name, value)
    return asyncio.create_task(arm())


def answer_segments(result, utterance: int = 0):
    """What the caller heard after its ``utterance``-th turn ended (and before its next one, if any)."""
    start = result.utterances[utterance].end_s
    end = result.utterances[utterance + 1].start_s if utterance + 1 < len(result.utterances) else float("inf")
    return [s for s in result.segments if start < s.start_s < end]


async def test_slow_tts_answer_is_heard_whole_with_gaps(stack, caller_en):
    before = await warm_up(stack, CHAIN)
    slow = arm_after_greeting(stack, tts_chunk_delay_s=SLOW_S)
    result = await simulate_twilio_call(
        stack.url, to=CHAIN, auth_token=AUTH_TOKEN, max_duration_s=40,
        script=[Say(caller_en, after_bot_done=True, pause_s=0.4, label="question"),
                Hangup(after_bot_done=True, pause_s=1.5)])
    await slow
    stack.emulator.faults.tts_chunk_delay_s = 0.0
    assert result.end_reason == "hangup" and result.protocol_errors == []
    await stack.idle()
    records = transcript_of(stack, result)
    said = turns(records)
    assert [t["role"] for t in said] == ["assistant", "user", "assistant"]
    assert said[2]["text"] == reply_to(said[1]["text"])
    # The whole answer reached the caller, with glitches: the playout ran dry between chunks and went on.
    answer = answer_segments(result)
    glitches = [u for u in result.underruns if answer and answer[0].start_s < u.start_s < answer[-1].end_s]
    assert len(glitches) >= 2, (answer, result.underruns)
    answer_tts = [r for r in tts_requests(stack) if r.result == said[2]["text"]]
    assert answer_tts and answer_tts[-1].done
    expected_ms = len(said[2]["text"]) * MS_PER_CHAR
    assert sum(s.played_ms for s in answer) >= 0.9 * expected_ms, (answer, expected_ms)
    assert of_type(records, "tts_failed") == []
    assert records[-1]["outcome"] == "completed"
    await settled(stack, before)


async def test_barge_in_during_slow_streaming_tts_closes_the_tts_socket(stack, caller_en, caller_interrupt):
    """Over the TTS WebSocket: the caller talks over a sentence that is still being synthesized; the
    socket and its reader task go with the cut turn, and the caller's new turn is answered."""
    before = await warm_up(stack, CHAIN_WS)
    slow = arm_after_greeting(stack, tts_chunk_delay_s=SLOW_S)
    result = await simulate_twilio_call(
        stack.url, to=CHAIN_WS, auth_token=AUTH_TOKEN, max_duration_s=40,
        script=[Say(caller_en, after_bot_done=True, pause_s=0.4, label="question"),
                Say(caller_interrupt, barge_after_bot_ms=600, label="barge"),
                Hangup(after_bot_done=True, pause_s=1.5)])
    await slow
    stack.emulator.faults.tts_chunk_delay_s = 0.0
    assert result.end_reason == "hangup" and result.protocol_errors == []
    assert len(result.clears) == 1
    await stack.idle()
    records = transcript_of(stack, result)
    assert len(of_type(records, "barge_in")) == 1
    said = turns(records)
    assert [t["role"] for t in said] == ["assistant", "user", "assistant", "user", "assistant"]
    assert said[2].get("interrupted") is True
    assert said[4]["text"] == reply_to(said[3]["text"])
    cut = [r for r in tts_requests(stack) if r.endpoint == "tts.ws" and r.aborted]
    assert cut, [(r.endpoint, r.done, r.aborted) for r in tts_requests(stack)]
    record = await stored_record(stack, records[0]["call_id"])
    assert record.barge_ins == 1 and record.outcome == "completed"
    await settled(stack, before)


async def faulted_call(stack, caller_en, to: str, fault: str):
    """Two questions; ``fault`` hits the synthesis of the first answer after 400 ms of its audio. The second
    question comes once the bot has been quiet for longer than a stalled synthesis is waited for."""
    armed = arm_after_greeting(stack, tts_fault_once=fault, tts_fault_after_chunks=FAULT_AFTER_CHUNKS)
    with structlog.testing.capture_logs() as logs:
        result = await simulate_twilio_call(
            stack.url, to=to, auth_token=AUTH_TOKEN, max_duration_s=40,
            script=[Say(caller_en, after_bot_done=True, pause_s=0.4, label="question"),
                    Say(caller_en, after_bot_done=True, pause_s=TTS_STALL_S + 1.0, label="again"),
                    Hangup(after_bot_done=True, pause_s=1.5)])
        await armed
        assert stack.emulator.faults.tts_fault_once is None, "the fault was never applied"
        await stack.idle()
    assert result.end_reason == "hangup" and result.protocol_errors == []
    records = transcript_of(stack, result)
    said = turns(records)
    assert [t["role"] for t in said] == ["assistant", "user", "assistant", "user", "assistant"], said
    # The call went on: the second question got its whole answer.
    assert said[4]["text"] == reply_to(said[3]["text"])
    second = answer_segments(result, 1)
    expected_ms = len(said[4]["text"]) * MS_PER_CHAR
    assert sum(s.played_ms for s in second) >= 0.9 * expected_ms, (second, expected_ms)
    assert records[-1]["type"] == "call_end" and records[-1]["outcome"] == "completed", records[-1]
    faulted = [r for r in tts_requests(stack) if r.error == f"fault: {fault}"]
    assert len(faulted) == 1, [(r.endpoint, r.error) for r in tts_requests(stack)]
    return result, records, logs


def lost_mid_sentence(result, records, reason_words: tuple[str, ...]) -> None:
    """The first answer broke off after the audio sent before the fault; the transcript says why."""
    first = answer_segments(result, 0)
    heard = sum(s.played_ms for s in first)
    full_ms = len(turns(records)[2]["text"]) * MS_PER_CHAR
    assert FAULT_AFTER_CHUNKS * 200 - 60 <= heard <= FAULT_AFTER_CHUNKS * 200 + 100 < full_ms, (first, full_ms)
    failed = of_type(records, "tts_failed")
    assert len(failed) == 1, failed
    assert failed[0]["text"] == turns(records)[2]["text"]
    assert any(word in failed[0]["reason"] for word in reason_words), failed[0]["reason"]


@pytest.mark.parametrize("to", [TTS_HTTP, TTS_WS], ids=["http", "ws"])
async def test_tts_reset_mid_sentence_cuts_that_sentence_and_the_call_goes_on(fault_stack, caller_en, to):
    stack = fault_stack
    before = await warm_up(stack, to)
    result, records, _ = await faulted_call(stack, caller_en, to, "reset")
    lost_mid_sentence(result, records, ("Disconnected", "closed", "Payload", "reset", "Connection"))
    await settled(stack, before)


@pytest.mark.parametrize("to", [TTS_HTTP, TTS_WS], ids=["http", "ws"])
async def test_tts_stall_mid_sentence_is_given_up_after_tts_stall_s(fault_stack, caller_en, to):
    """The synthesis stops sending but keeps its connection: after ``chain.tts_stall_s`` the sentence is
    given up, its connection dropped (not kept for a server that never finishes), and the call goes on."""
    stack = fault_stack
    before = await warm_up(stack, to)
    result, records, _ = await faulted_call(stack, caller_en, to, "stall")
    lost_mid_sentence(result, records, ("timed out", "nothing received"))
    # Given up after the stall limit, not the request's 30 s total: the failure is noted that long after the
    # last audio arrived (it then played for another 400 ms; call and caller clocks agree within a frame or so).
    failed_s = of_type(records, "tts_failed")[0]["t_ms"] / 1000
    audio_stopped_s = answer_segments(result, 0)[-1].end_s
    assert TTS_STALL_S - 1.0 < failed_s - audio_stopped_s < TTS_STALL_S + 0.5, (failed_s, audio_stopped_s)
    await settled(stack, before)


@pytest.mark.parametrize("to", [TTS_HTTP, TTS_WS], ids=["http", "ws"])
async def test_tts_garbage_mid_sentence_is_dropped_and_the_sentence_plays_whole(fault_stack, caller_en, to):
    """Malformed events in the middle of a synthesis (an HTML error page, cut-off JSON, mistyped fields,
    undecodable audio, a binary frame): each is dropped with a log line, and the caller hears the whole
    answer, with no failure noted."""
    stack = fault_stack
    before = await warm_up(stack, to)
    result, records, logs = await faulted_call(stack, caller_en, to, "garbage")
    said = turns(records)
    assert said[2]["text"] == reply_to(said[1]["text"]) and not said[2].get("interrupted")
    first = answer_segments(result, 0)
    expected_ms = len(said[2]["text"]) * MS_PER_CHAR
    assert sum(s.played_ms for s in first) >= 0.9 * expected_ms, (first, expected_ms)
    assert len(first) == 1, first        # no gap: the garbage cost no audio
    assert_no_underrun_of_the_servers_making(result)
    assert of_type(records, "tts_failed") == []
    dropped = [e for e in logs if e["event"] in ("stepfun.tts_bad_event", "stepfun.tts_ws_bad_event")]
    assert len(dropped) >= 4, [e["event"] for e in logs]
    assert not [e for e in logs if e["event"] in ("chain_turn_crashed", "chain_tts_failed", "chain_tts_ws_failed")]
    await settled(stack, before)
