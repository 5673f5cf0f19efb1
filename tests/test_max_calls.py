"""server.max_calls: one process takes at most that many calls at once; the next is refused the carrier's way
(Twilio's voice webhook: <Reject reason="busy"/>; a media upgrade: HTTP 503; AudioSocket: its hang-up message),
counted as voicebot_stream_refusals_total{reason="limit"} and logged; once a call ends, a new one is taken."""

from __future__ import annotations

import asyncio

import pytest
import structlog

from voicebot.emulator.app import Emulator, start_emulator
from voicebot.server import SERVICES
from voicebot.simulator.audiosocket import AudioSocketProtocol
from voicebot.simulator.caller import Hangup, Say, SimulatedCall
from voicebot.simulator.twilio import simulate_twilio_call
from voicebot.telephony.audiosocket import AudioSocketListener
from voicebot.telephony.base import CarrierOptions

from conftest import AUTH_TOKEN, start_voice_server, until
from drain_checks import DRAIN_LINE, GREETING, media_upgrade_status, persona, post_voice_webhook
from metrics_scrape import delta, scrape

BUSY = '<Reject reason="busy"/>'


@pytest.fixture
async def emulator():
    runner, emulator = await start_emulator("127.0.0.1", 0, Emulator(speed=3.0))
    yield emulator
    await runner.cleanup()


async def serving(tmp_path, emulator, max_calls: int):
    plans = tmp_path / "dialplans"
    plans.mkdir()
    (plans / "drain.yaml").write_text(persona())
    return await start_voice_server(tmp_path, plans, emulator, max_calls=max_calls)


async def test_beyond_max_calls_new_calls_are_refused_and_counted_until_one_ends(tmp_path, emulator, caller_en):
    runner, settings, app = await serving(tmp_path, emulator, max_calls=2)
    url, services = settings.public_url, app[SERVICES]
    listener = AudioSocketListener(services, "127.0.0.1", 0, CarrierOptions(persona="drain-en"))
    await listener.start()
    with structlog.testing.capture_logs() as logs:
        try:
            before = await scrape(url)
            held = [asyncio.create_task(simulate_twilio_call(
                url, to=DRAIN_LINE, auth_token=AUTH_TOKEN, max_duration_s=30, seed=n,
                script=[Say(caller_en, after_bot_done=True, pause_s=0.3), Hangup(after_bot_done=True, pause_s=0.3)]))
                for n in range(2)]
            await until(lambda: len(services.calls) == 2, what="two calls in progress")
            status, twiml = await post_voice_webhook(url, AUTH_TOKEN)
            assert status == 200 and BUSY in twiml and "<Stream" not in twiml
            # A call a campaign placed is answered already: it can only be hung up.
            status, twiml = await post_voice_webhook(url, AUTH_TOKEN, query="?attempt=any")
            assert status == 200 and "<Hangup/>" in twiml and "<Stream" not in twiml
            assert await media_upgrade_status(url) == 503
            protocol = AudioSocketProtocol(url, port=listener.port)
            refused = await SimulatedCall(protocol, [Hangup(at_s=5)], max_duration_s=8).run()
            middle = await scrape(url)
            results = await asyncio.gather(*held)
            # One call over: the next one is taken, and heard whole.
            await until(lambda: not services.calls, what="the two calls to end")
            again = await simulate_twilio_call(url, to=DRAIN_LINE, auth_token=AUTH_TOKEN, max_duration_s=20,
                                               script=[Hangup(after_bot_done=True, pause_s=0.3)])
        finally:
            await listener.stop()
            await runner.cleanup()
    assert all(r.end_reason == "hangup" and r.protocol_errors == [] and len(r.utterances) == 1 for r in results)
    assert refused.end_reason == "server_closed" and protocol.hung_up_by_server and refused.media_received == []
    assert delta(middle, before, "voicebot_stream_refusals_total", carrier="twilio", reason="limit") == 3
    assert delta(middle, before, "voicebot_stream_refusals_total", carrier="audiosocket", reason="limit") == 1
    refusals = [e for e in logs if e["event"] == "call_refused"]
    assert [(e["carrier"], e["reason"], e["calls"], e["max_calls"]) for e in refusals] == \
        [("twilio", "limit", 2, 2)] * 3 + [("audiosocket", "limit", 2, 2)]
    assert again.end_reason == "hangup" and again.segments[0].played_ms >= 0.9 * len(GREETING) * 65


async def test_max_calls_0_is_no_limit(tmp_path, emulator):
    runner, settings, app = await serving(tmp_path, emulator, max_calls=0)
    url, services = settings.public_url, app[SERVICES]
    try:
        calls = [asyncio.create_task(simulate_twilio_call(url, to=DRAIN_LINE, auth_token=AUTH_TOKEN,
                                                          max_duration_s=20, seed=n, script=[Hangup(at_s=3)]))
                 for n in range(5)]
        await until(lambda: len(services.calls) == 5, what="five calls in progress")
        results = await asyncio.gather(*calls)
    finally:
        await runner.cleanup()
    assert all(r.end_reason == "hangup" and r.first_bot_audio_s is not None for r in results)
