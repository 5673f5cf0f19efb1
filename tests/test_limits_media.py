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
from voicebot.server import SERVICES
from voicebot.simulator.caller import Hangup, Say
from voicebot.simulator.twilio import simulate_twilio_call
from voicebot.telephony.audiosocket import AudioSocketListener
from voicebot.telephony.base import CarrierOptions
from voicebot.telephony.flood import FLOOD_BURST_MS

from call_buffers import BufferWatch
from carrier_checks import GREETING
from carrier_wire import ALL_CARRIER_SECRETS, WEBSOCKET_CARRIERS, CarrierConnection
from conftest import AUTH_TOKEN, EN, until
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


@pytest.fixture
async def audiosocket_port(stack):
    """An AudioSocket listener (TCP: the other transport) on a free loopback port."""
    listener = AudioSocketListener(stack.app[SERVICES], "127.0.0.1", 0, CarrierOptions(persona="test-en"))
    await listener.start()
    try:
        yield listener.port
    finally:
        await listener.stop()


@pytest.mark.parametrize("carrier", ["twilio", "vonage", "audiosocket"])    # JSON, binary, TCP
async def test_audio_flooding_in_is_dropped_beyond_real_time_counted_and_the_calls_go_on(
        stack, audiosocket_port, caller_en, carrier):
    calls, loop = stack.app[SERVICES].calls, asyncio.get_running_loop()
    before = await scrape(stack.url)
    conn = await CarrierConnection.open(carrier, stack.url, to=EN, port=audiosocket_port)
    await until(lambda: calls and stack.emulator.sessions, what="the call and its model session")
    call, session = next(iter(calls)), stack.emulator.sessions[0]
    beside = call_beside(stack, caller_en)
    watch = BufferWatch()
    model_ahead_ms: list[float] = []          # what the model got of this call, ahead of the clock

    async def measure(t0: float) -> None:
        while True:
            watch.sample(call)
            model_ahead_ms.append(session.input_samples / 24 - (loop.time() - t0) * 1000)
            await asyncio.sleep(0.05)

    with structlog.testing.capture_logs() as logs:
        t0 = loop.time()
        measuring = asyncio.create_task(measure(t0))
        sent = await conn.send_speech(long_speech(caller_en, 1))                # a second of ordinary speech,
        sent += await conn.send_speech(long_speech(caller_en, 40), speed=10)   # then 40 s of it in 4 s,
        sent += await conn.send_speech(long_speech(caller_en, 2))               # then real time again
        await asyncio.sleep(0.3)
        elapsed_ms = (loop.time() - t0) * 1000
        model_ms = session.input_samples / 24
        measuring.cancel()
        assert not conn.closed and conn.bot_messages > 0     # the flooding call itself goes on
        await conn.close()
        result = await beside
        await stack.idle()
    after = await scrape(stack.url)

    assert sent == 43 * 50
    # The model got the audio that fits real time (plus the one burst allowed), never the flood.
    assert elapsed_ms - 500 < model_ms < elapsed_ms + FLOOD_BURST_MS + 100, (model_ms, elapsed_ms)
    assert max(model_ahead_ms) < FLOOD_BURST_MS + 100
    dropped = delta(after, before, "voicebot_frames_dropped_total", carrier=carrier, reason="flood")
    assert abs(dropped + model_ms / 20 - sent) <= 3, (dropped, model_ms / 20, sent)     # every frame accounted
    assert dropped > 30 * 50
    # Nothing piled up anywhere on the way while it flooded.
    assert watch.samples > 50
    assert watch.peaks["caller_frames_held"] == 0 and watch.peaks["outbox_messages"] == 0
    assert watch.peaks["stepfun_unsent_bytes"] < 64 * 1024
    assert watch.peaks.get("carrier_unread_bytes", 0) <= stack.settings.max_message_bytes
    # Logged when it began and, with its totals, when the call ended; never per message.
    floods = [e for e in logs if e["event"].startswith("caller_audio_flood")]
    assert [e["event"] for e in floods] == ["caller_audio_flood", "caller_audio_flood_dropped"]
    assert all(e["carrier"] == carrier and e["log_level"] == "warning" for e in floods)
    assert abs(floods[1]["dropped_ms"] - dropped * 20) <= 20
    assert_undisturbed(result)
