"""Checks for carriers that keep no playback buffer we can flush or mark (Asterisk AudioSocket, FreeSWITCH
mod_audio_stream): the server must send in real time, and a barge-in can only stop sending — so the model
must be truncated at all the audio that was sent, since all of it is heard.

``simulate`` is a carrier's ``simulate_call(base_url, *, to, script, max_duration_s, **options)``."""

from __future__ import annotations

from voicebot.simulator.caller import CallResult, Hangup, Say

from carrier_checks import GREETING, assert_no_underrun_of_the_servers_making, rms_dbfs, transcript_of
from conftest import EN


def worst_lead_ms(result: CallResult, bytes_per_ms: float) -> float:
    """How far ahead of real time the server's audio ever was: a buffer filled by each arrival and drained
    at the speed of playback."""
    level = worst = 0.0
    last = None
    for t, size in result.media_received:
        if last is not None:
            level = max(0.0, level - (t - last) * 1000)
        level += size / bytes_per_ms
        worst, last = max(worst, level), t
    return worst


async def paced_conversation(stack, simulate, caller_en, *, bytes_per_ms: float, max_lead_ms: float = 80,
                             **options) -> CallResult:
    """Greeting and reply heard whole, never more than ``max_lead_ms`` ahead; the caller reached the model."""
    result = await simulate(stack.url, to=EN, max_duration_s=30,
                            script=[Say(caller_en, after_bot_done=True, pause_s=0.4, label="question"),
                                    Hangup(after_bot_done=True, pause_s=0.5)], **options)
    assert result.protocol_errors == []
    assert worst_lead_ms(result, bytes_per_ms) <= max_lead_ms
    greeting = result.segments[0]
    assert greeting.played_ms >= 0.9 * len(GREETING) * 65 and greeting.ended_by == "drained"   # one run
    assert_no_underrun_of_the_servers_making(result)
    assert rms_dbfs(result.heard[result.heard != 0]) > -30
    utterance = result.utterances[0]
    reply = [s for s in result.segments if s.start_s > utterance.end_s]
    assert reply and reply[0].played_ms > 0.8 * (utterance.end_s - utterance.start_s) * 1000
    turns = [r for r in await transcript_of(stack) if r["type"] == "turn"]
    assert [t["role"] for t in turns] == ["assistant", "user", "assistant"]
    return result


async def barge_in_without_flush(stack, simulate, caller_en, caller_interrupt, **options) -> CallResult:
    """The caller talks over the reply: the server stops sending at once, and the model is truncated at what
    the carrier played of the reply (±40 ms), the audio already sent included."""
    result = await simulate(stack.url, to=EN, max_duration_s=40,
                            script=[Say(caller_en, after_bot_done=True, pause_s=0.4, label="question"),
                                    Say(caller_interrupt, barge_after_bot_ms=800, label="barge"),
                                    Hangup(after_bot_done=True, pause_s=0.5)], **options)
    assert result.protocol_errors == []
    assert result.clears == []                     # nothing to flush on this carrier
    session = stack.emulator.sessions[0]
    truncates = session.received_of("conversation.item.truncate")
    assert len(truncates) == 1 and len(session.received_of("response.cancel")) == 1
    barge = [u for u in result.utterances if u.barge][0]
    reply = [s for s in result.segments if s.start_s < barge.start_s <= s.end_s]
    assert len(reply) == 1
    assert abs(truncates[0]["audio_end_ms"] - reply[0].played_ms) <= 40, (truncates[0], reply[0])
    assert reply[0].end_s - barge.start_s < 0.6                     # sending stopped soon after
    after = [s for s in result.segments if s.start_s > reply[0].end_s]
    assert after and after[0].start_s > barge.end_s                 # the next answer waits for the caller
    records = await transcript_of(stack)
    assert [r["heard"][0]["heard_ms"] for r in records if r["type"] == "barge_in"] == [truncates[0]["audio_end_ms"]]
    return result
