"""StepFun's realtime socket failing in the middle of an answer — reset, stalled, garbage, an invalid frame —
through the real server, the emulator and a simulated Twilio caller: the call goes on (on the chain when the
realtime session is lost, design invariant 4), the caller hears an answer, the call leaves its transcript and
record, and nothing is left behind (tasks, descriptors, sockets)."""

from __future__ import annotations

from voicebot.simulator.caller import Hangup, Say
from voicebot.simulator.twilio import simulate_twilio_call

from conftest import AUTH_TOKEN, EN, IMPATIENT
from faults import arm_after_greeting, of_type, reply_to, stored_record, transcript_of, turns, warm_up
from leaks import settled


async def call_with_fault(stack, caller_en, to: str, fault: str, after_deltas: int = 5):
    """A caller asks one question; ``fault`` hits the answer after ``after_deltas`` audio deltas (100 ms
    each); the caller hangs up once the bot has been quiet for 3 s (a switch to the chain takes less)."""
    armed = arm_after_greeting(stack, realtime_fault_once=fault, realtime_fault_after_deltas=after_deltas)
    result = await simulate_twilio_call(
        stack.url, to=to, auth_token=AUTH_TOKEN, max_duration_s=40,
        script=[Say(caller_en, after_bot_done=True, pause_s=0.4, label="question"),
                Hangup(after_bot_done=True, pause_s=3.0)])
    await armed
    assert stack.emulator.faults.realtime_fault_once is None, "the fault was never applied"
    await stack.idle()
    return result, transcript_of(stack, result)


def answered_on_the_chain(result, records, reason_words: tuple[str, ...]) -> None:
    """The realtime session was lost mid-answer: one switch, the chain answered the question again in full,
    and the caller heard that answer."""
    switch = of_type(records, "engine_switch")
    assert len(switch) == 1, switch
    assert switch[0]["mid_answer"] is True and switch[0]["opening"] == "reanswer"
    assert any(word in switch[0]["reason"] for word in reason_words), switch[0]["reason"]
    said = turns(records)
    assert [(t["role"], t["engine"]) for t in said][:2] == [("assistant", "realtime"), ("user", "realtime")]
    assert said[-1]["role"] == "assistant" and said[-1]["engine"] == "chain"
    assert said[-1]["text"] == reply_to(said[1]["text"])
    question = result.utterances[0]
    after = [s for s in result.segments if s.start_s > question.end_s]
    assert sum(s.played_ms for s in after) > 1000, after     # the cut answer, then the chain's in full
    assert result.protocol_errors == []


async def test_reset_mid_answer_fails_over_to_the_chain_and_leaks_nothing(stack, caller_en):
    before = await warm_up(stack, EN)
    result, records = await call_with_fault(stack, caller_en, EN, "reset")
    assert stack.emulator.sessions[-1].fault == "reset"
    answered_on_the_chain(result, records, ("lost", "closed"))
    end = records[-1]
    assert end["type"] == "call_end" and end["outcome"] == "completed" and end["engine_switches"] == 1
    record = await stored_record(stack, records[0]["call_id"])
    assert record.outcome == "completed" and record.engines == ["realtime", "chain"]
    await settled(stack, before)


async def test_stall_mid_answer_fails_over_after_the_response_timeout_and_leaks_nothing(stack, caller_en):
    """The emulator stops talking and reading (close frames and pings included): the response watchdog
    (1 s on this persona) switches to the chain, and the dead socket is not kept."""
    before = await warm_up(stack, IMPATIENT)
    result, records = await call_with_fault(stack, caller_en, IMPATIENT, "stall")
    session = stack.emulator.sessions[-1]
    assert session.fault == "stall" and session.closed
    answered_on_the_chain(result, records, ("no realtime events",))
    # The dead session is dropped, not closed politely: the chain does not wait for a close handshake.
    assert of_type(records, "engine_switch")[0]["switch_ms"] < 1000
    assert records[-1]["type"] == "call_end" and records[-1]["outcome"] == "completed"
    await settled(stack, before)


async def test_garbage_mid_answer_is_dropped_and_the_answer_plays_to_its_end(stack, caller_en):
    """Malformed messages in the middle of an answer (an HTML error page, cut-off JSON, mistyped fields, a
    binary frame, …): each is dropped and logged, the session goes on, and the caller hears the whole answer."""
    before = await warm_up(stack, EN)
    result, records = await call_with_fault(stack, caller_en, EN, "garbage")
    session = stack.emulator.sessions[-1]
    assert session.fault == "garbage" and session.close_reason == "client closed (1000)"
    assert of_type(records, "engine_switch") == []
    said = turns(records)
    assert [(t["role"], t["engine"]) for t in said] == [("assistant", "realtime"), ("user", "realtime"),
                                                        ("assistant", "realtime")]
    assert said[-1]["text"] == reply_to(said[1]["text"])
    question = result.utterances[0]
    answer = [s for s in result.segments if s.start_s > question.end_s]
    assert len(answer) == 1 and answer[0].ended_by == "drained"
    assert answer[0].played_ms >= session.responses[-1].planned_ms - 60, (answer, session.responses[-1].planned_ms)
    assert result.protocol_errors == []
    assert records[-1]["type"] == "call_end" and records[-1]["outcome"] == "completed"
    await settled(stack, before)


async def test_invalid_frame_mid_answer_fails_over_at_once_and_leaks_nothing(stack, caller_en):
    """A frame no WebSocket client may accept, then a server that ignores everything (our close frame
    too): the connection is failed at once — not when the response watchdog would notice (8 s here) — and
    the socket is dropped."""
    before = await warm_up(stack, EN)
    result, records = await call_with_fault(stack, caller_en, EN, "bad_frame")
    assert stack.emulator.sessions[-1].fault == "bad_frame"
    answered_on_the_chain(result, records, ("invalid", "protocol", "frame"))
    question = result.utterances[0]
    answer = [s for s in result.segments if s.start_s > question.end_s]
    # Realtime's first 500 ms, then the chain's answer after a short switch (not the 8 s watchdog).
    assert len(answer) >= 2 and answer[1].start_s - answer[0].end_s < 3.0, answer
    await settled(stack, before)
