"""Limits on what a carrier's media connection can make the server hold or do, on every carrier (the one code
path in voicebot/answer.py and voicebot/wsserver.py): a message over ``server.max_message_bytes``, audio
flooding in faster than real time, a carrier that stops reading the bot's audio. Each is a real carrier
connection (voicebot/simulator's protocols) sending speech, beside an ordinary call that must not notice."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import structlog

from voicebot.audio import FRAME_SAMPLES
from voicebot.simulator.caller import Hangup, Say
from voicebot.simulator.twilio import simulate_twilio_call

from carrier_checks import GREETING, rms_dbfs
from carrier_wire import ALL_CARRIER_SECRETS, WEBSOCKET_CARRIERS, CarrierConnection
from conftest import AUTH_TOKEN, EN
from metrics_scrape import delta, scrape


@pytest.fixture(autouse=True)
def all_carrier_secrets(monkeypatch):
    """Every carrier's secret, set before ``stack`` builds the server (autouse fixtures come first)."""
    for name, value in ALL_CARRIER_SECRETS.items():
        monkeypatch.setenv(name, value)


def call_beside(stack, caller_en) -> asyncio.Task:
    """An ordinary Twilio call: the greeting, a question, the reply, hang-up."""
    return asyncio.create_task(simulate_twilio_call(
        stack.url, to=EN, auth_token=AUTH_TOKEN, max_duration_s=40,
        script=[Say(caller_en, after_bot_done=True, pause_s=0.4, label="question"),
                Hangup(after_bot_done=True, pause_s=0.5)]))


def assert_undisturbed(result) -> None:
    """The call beside heard its whole greeting and a reply to its question, and nothing went wrong on it."""
    assert result.protocol_errors == [] and result.end_reason == "hangup", result.format_timeline()
    assert result.segments[0].played_ms >= 0.9 * len(GREETING) * 65 and result.segments[0].ended_by == "drained"
    question = result.utterances[0]
    reply = [s for s in result.segments if s.start_s > question.end_s]
    assert reply and reply[0].played_ms > 1000, result.format_timeline()
    assert result.clears == [] and result.max_tick_lag_ms < 200


def long_speech(caller_en: np.ndarray, seconds: float) -> np.ndarray:
    """``seconds`` of the caller's speech, repeated, in whole 20 ms frames."""
    frames = int(seconds * 50)
    return np.tile(caller_en, frames * FRAME_SAMPLES // len(caller_en) + 1)[:frames * FRAME_SAMPLES]


async def test_a_message_over_the_limit_is_closed_1009_on_every_carrier_and_the_call_beside_goes_on(stack, caller_en):
    limit = stack.settings.max_message_bytes
    minutes = long_speech(caller_en, 300)
    before = await scrape(stack.url)
    connections = [await CarrierConnection.open(carrier, stack.url, to=EN) for carrier in WEBSOCKET_CARRIERS]
    try:
        # Five minutes of speech in one media message each, encoded before the call beside starts: the test
        # shares the server's event loop, and encoding megabytes here would delay that call, not the server.
        huge = {conn.carrier: conn.one_message_of(minutes) for conn in connections}
        sizes = {carrier: len(m.encode() if isinstance(m, str) else m) for carrier, m in huge.items()}
        assert min(sizes.values()) > 2 * 2**20
        beside = call_beside(stack, caller_en)
        with structlog.testing.capture_logs() as logs:
            await asyncio.sleep(0.5)                    # the call beside is hearing its greeting
            for conn in connections:
                conn.send(conn.audio_messages(caller_en[:25 * FRAME_SAMPLES]))    # this call is under way
                await asyncio.sleep(0.2)
                conn.send(huge.pop(conn.carrier))
                await conn.wait_closed()
                assert conn.close_code == 1009, (conn.carrier, conn.close_code, conn.close_reason)
                assert (f"message of {sizes[conn.carrier]} bytes is over the {limit}-byte limit"
                        in conn.close_reason)
                assert conn.bot_messages > 0             # it was a call: its greeting had begun
            result = await beside
            await stack.idle()
    finally:
        for conn in connections:
            await conn.close()
    after = await scrape(stack.url)
    assert_undisturbed(result)
    refused = [entry for entry in logs if entry["event"] == "media_message_too_big"]
    assert {entry["carrier"]: entry["size"] for entry in refused} == sizes
    assert all(entry["limit"] == limit and entry["log_level"] == "warning" for entry in refused)
    assert len(refused) == len(WEBSOCKET_CARRIERS)
    # Our own refusal, not something the carrier got wrong.
    assert not [entry for entry in logs if entry["event"] == "carrier_protocol_error"]
    for carrier in WEBSOCKET_CARRIERS:
        assert delta(after, before, "voicebot_stream_refusals_total", carrier=carrier, reason="limit") == 1, carrier
    assert delta(after, before, "voicebot_stream_refusals_total") == len(WEBSOCKET_CARRIERS)
