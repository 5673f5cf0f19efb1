"""``GET /metrics``: what real calls through the real server (simulated carrier, emulated StepFun) leave in the
Prometheus metrics, refusals counted by reason, the optional bearer token, the off switch, bounded labels."""

from __future__ import annotations

import asyncio
import base64
import json

import aiohttp
import pytest
import websockets
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from voicebot import metrics
from voicebot.server import SERVICES
from voicebot.simulator.caller import Hangup, Say
from voicebot.simulator.twilio import parse_twiml_stream, simulate_twilio_call
from voicebot.telephony.twilio_auth import compute_signature

from conftest import AUTH_TOKEN, EN, REALTIME_ONLY, start_voice_server, until
from metrics_scrape import Scrape, delta, scrape

ULAW_FRAME_BYTES = 160      # 20 ms of 8 kHz μ-law


async def active_calls(url: str, **labels: str) -> float:
    return (await scrape(url)).value("voicebot_active_calls", **labels)


async def the_call(stack):
    """The one call the server is running (once it has started)."""
    calls = stack.app[SERVICES].calls
    await until(lambda: len(calls) == 1, what="the call to start")
    return next(iter(calls))


async def test_a_barge_in_call_is_counted_as_the_call_itself_measured_it(stack, caller_en, caller_interrupt):
    before = await scrape(stack.url)
    placed = asyncio.create_task(simulate_twilio_call(
        stack.url, to=EN, auth_token=AUTH_TOKEN, max_duration_s=40,
        script=[Say(caller_en, after_bot_done=True, pause_s=0.4, label="question"),
                Say(caller_interrupt, barge_after_bot_ms=800, label="barge"),
                Hangup(after_bot_done=True, pause_s=0.5)]))
    call = await the_call(stack)
    labels = dict(carrier="twilio", persona="test-en", engine="realtime")
    await until(lambda: active_calls(stack.url, **labels), what="the call counted as active")
    assert (await scrape(stack.url)).value("voicebot_active_calls") - before.value("voicebot_active_calls") == 1
    result = await placed
    await stack.idle()
    after = await scrape(stack.url)

    assert result.protocol_errors == [] and len(result.clears) == 1
    assert after.value("voicebot_active_calls", **labels) == before.value("voicebot_active_calls", **labels)
    assert delta(after, before, "voicebot_calls_total") == 1
    assert delta(after, before, "voicebot_calls_total", carrier="twilio", outcome=call.outcome) == 1
    # First audio, turn latencies and the barge-in: what the call's own record says, observed once each.
    record = call.record()
    assert delta(after, before, "voicebot_first_audio_seconds_count") == 1
    assert delta(after, before, "voicebot_first_audio_seconds_sum") == pytest.approx(record["first_audio_ms"] / 1000,
                                                                                     abs=0.001)
    assert len(record["turn_latencies_ms"]) >= 1
    assert delta(after, before, "voicebot_turn_latency_seconds_count") == len(record["turn_latencies_ms"])
    assert delta(after, before, "voicebot_turn_latency_seconds_sum") == pytest.approx(
        sum(record["turn_latencies_ms"]) / 1000, abs=0.001 * len(record["turn_latencies_ms"]))
    assert len(call.barge_ins) == 1
    assert delta(after, before, "voicebot_barge_in_reaction_seconds_count") == 1
    assert delta(after, before, "voicebot_barge_in_reaction_seconds_sum") == pytest.approx(
        call.barge_ins[0]["reaction_us"] / 1e6, abs=1e-6)
    # Every bot frame the caller received had its server-added latency observed, in the bucket it fell in.
    frames = sum(size for _, size in result.media_received) // ULAW_FRAME_BYTES
    assert frames == call.playout.frames_sent > 100
    assert delta(after, before, "voicebot_frame_latency_seconds_count") == frames
    assert delta(after, before, "voicebot_frame_latency_seconds_bucket", le="+Inf") == frames
    assert 0 <= delta(after, before, "voicebot_frame_latency_seconds_sum") < frames * 0.1    # mean under 100 ms
    assert delta(after, before, "voicebot_engine_failovers_total") == 0
    assert delta(after, before, "voicebot_stepfun_errors_total") == 0
    # No label anywhere carries the caller's number or the call's ids.
    for text in (after.text,):
        for private in ("+15005550006", EN, call.call_id, call.meta.call_id, call.meta.stream_id):
            assert private not in text


async def test_stepfun_refusing_realtime_is_a_failover_counted_with_its_error_and_the_engine_moves(stack):
    stack.emulator.faults.refuse_realtime_status = 503
    before = await scrape(stack.url)
    placed = asyncio.create_task(simulate_twilio_call(
        stack.url, to=EN, auth_token=AUTH_TOKEN, max_duration_s=20, script=[Hangup(after_bot_done=True, pause_s=0.3)]))
    call = await the_call(stack)
    chain = dict(carrier="twilio", persona="test-en", engine="chain")
    await until(lambda: active_calls(stack.url, **chain), what="the call active on the chain")
    during = await scrape(stack.url)
    assert delta(during, before, "voicebot_active_calls", engine="realtime") == 0
    assert delta(during, before, "voicebot_active_calls", engine="chain") == 1
    result = await placed
    await stack.idle()
    after = await scrape(stack.url)

    assert result.first_bot_audio_s is not None          # the chain greeted the caller
    assert call.engines_used == ["realtime", "chain"]
    assert delta(after, before, "voicebot_engine_failovers_total", from_engine="realtime", to_engine="chain") == 1
    assert delta(after, before, "voicebot_stepfun_errors_total", kind="unavailable") == 1
    assert delta(after, before, "voicebot_stepfun_errors_total") == 1
    assert delta(after, before, "voicebot_active_calls") == 0
    assert delta(after, before, "voicebot_calls_total", carrier="twilio", outcome="completed") == 1


async def test_a_realtime_socket_dropped_mid_call_counts_the_error_and_a_failed_call(stack, caller_en):
    stack.emulator.faults.drop_realtime_after_s = 2.0
    before = await scrape(stack.url)
    result = await simulate_twilio_call(stack.url, to=REALTIME_ONLY, auth_token=AUTH_TOKEN, max_duration_s=15,
                                        script=[Say(caller_en, at_s=5.0), Hangup(at_s=12)])
    await stack.idle()
    after = await scrape(stack.url)
    assert result.end_reason == "server_closed"
    assert delta(after, before, "voicebot_stepfun_errors_total", kind="realtime_dropped") == 1
    assert delta(after, before, "voicebot_calls_total", carrier="twilio", outcome="failed") == 1
    assert delta(after, before, "voicebot_engine_failovers_total") == 0     # realtime only: nothing to fail over to


async def test_refused_streams_are_counted_by_reason(carrier_stack):
    stack = carrier_stack
    before = await scrape(stack.url)
    # Twilio: a stream without a valid token (auth), a webhook without a valid signature (auth).
    result = await simulate_twilio_call(
        stack.url, to=EN, auth_token=AUTH_TOKEN, max_duration_s=5, stream_signature=None,
        custom_parameters={"From": "+15005550006", "To": EN, "CallSid": "CA" + "1" * 32, "token": "1.forged"},
        script=[Hangup(at_s=3)])
    assert result.close_code == 1008 and result.media_received == []
    async with aiohttp.ClientSession() as http:
        async with http.post(stack.url + "/twilio/voice", data={"CallSid": "CA" + "0" * 32, "To": EN}) as resp:
            assert resp.status == 403
        # Vonage: the upgrade without its Authorization header (auth, 401 before any audio).
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(stack.url.replace("http", "ws") + "/vonage/media")
        assert refused.value.status == 401
        # Not a WebSocket upgrade at all (protocol, 400).
        async with http.get(stack.url + "/twilio/media") as resp:
            assert resp.status == 400
    # A message over server.max_message_bytes (limit: closed with 1009).
    stream_url, params = await _twilio_stream(stack.url, "CA" + "7" * 32)
    async with websockets.connect(stream_url, max_size=None) as ws:
        await ws.send("x" * (stack.settings.max_message_bytes + 1))
        await ws.wait_closed()
    assert ws.close_code == 1009
    await stack.idle()
    after = await scrape(stack.url)

    assert delta(after, before, "voicebot_stream_refusals_total", carrier="twilio", reason="auth") == 2
    assert delta(after, before, "voicebot_stream_refusals_total", carrier="vonage", reason="auth") == 1
    assert delta(after, before, "voicebot_stream_refusals_total", carrier="twilio", reason="protocol") == 1
    assert delta(after, before, "voicebot_stream_refusals_total", carrier="twilio", reason="limit") == 1
    assert delta(after, before, "voicebot_stream_refusals_total") == 5
    assert after.label_values("voicebot_stream_refusals_total", "reason") <= set(metrics.REFUSAL_REASONS)


async def test_unusable_carrier_messages_are_counted_as_dropped_frames(stack):
    stream_url, params = await _twilio_stream(stack.url, "CA" + "8" * 32)
    sid = "MZ" + "8" * 32
    before = await scrape(stack.url)
    async with websockets.connect(stream_url) as ws:
        await ws.send(json.dumps({"event": "start", "streamSid": sid, "start": {
            "streamSid": sid, "callSid": "CA" + "8" * 32, "customParameters": params,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}))
        await ws.send("{not json")
        await ws.send(json.dumps({"event": "media", "streamSid": sid, "media": {"payload": "!!not base64!!"}}))
        await ws.send(json.dumps({"event": "media", "streamSid": sid,
                                  "media": {"payload": base64.b64encode(b"\xff" * 160).decode()}}))
        await ws.send(json.dumps({"event": "stop", "streamSid": sid}))
    await stack.idle()
    after = await scrape(stack.url)
    assert delta(after, before, "voicebot_frames_dropped_total", carrier="twilio", reason="protocol") == 2
    assert delta(after, before, "voicebot_calls_total", carrier="twilio") == 1


async def test_the_bearer_token_guards_metrics_when_it_is_set(stack, monkeypatch):
    assert (await scrape(stack.url)).value("voicebot_active_calls") == 0     # open without a token set
    monkeypatch.setenv(metrics.TOKEN_ENV, "scrape-secret-4e1f")
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic c2NyYXBlOnNlY3JldA=="}):
            async with http.get(stack.url + "/metrics", headers=headers) as resp:
                assert resp.status == 401
                assert "voicebot_" not in await resp.text()
    assert "voicebot_calls_total" in (await scrape(stack.url, token="scrape-secret-4e1f")).text


async def test_metrics_off_means_no_route_and_nothing_recorded(tmp_path, monkeypatch, caller_en):
    from voicebot.emulator.app import Emulator, start_emulator

    monkeypatch.setattr(metrics, "ENABLED", False)
    emu_runner, emulator = await start_emulator("127.0.0.1", 0, Emulator(speed=3.0))
    plans = tmp_path / "dialplans"
    plans.mkdir()
    from conftest import PERSONAS
    (plans / "test.yaml").write_text(PERSONAS, encoding="utf-8")
    runner, settings, app = await start_voice_server(tmp_path, plans, emulator)
    try:
        before = Scrape(generate_latest().decode())
        result = await simulate_twilio_call(settings.public_url, to=EN, auth_token=AUTH_TOKEN, max_duration_s=20,
                                            script=[Say(caller_en, after_bot_done=True, pause_s=0.3),
                                                    Hangup(after_bot_done=True, pause_s=0.3)])
        await until(lambda: not app[SERVICES].calls, what="the call to finish")
        async with aiohttp.ClientSession() as http:
            async with http.get(settings.public_url + "/metrics") as resp:
                assert resp.status == 404
        after = Scrape(generate_latest().decode())
    finally:
        await runner.cleanup()
        await emu_runner.cleanup()
    assert result.first_bot_audio_s is not None and result.protocol_errors == []
    for name in ("voicebot_calls_total", "voicebot_first_audio_seconds_count", "voicebot_frame_latency_seconds_count",
                 "voicebot_turn_latency_seconds_count"):
        assert delta(after, before, name) == 0, name


def test_a_tally_published_at_once_equals_observing_each_value():
    registry = CollectorRegistry()
    one_by_one = Histogram("one_by_one_seconds", "h", buckets=metrics.FRAME_BUCKETS, registry=registry)
    tallied = Histogram("tallied_seconds", "h", buckets=metrics.FRAME_BUCKETS, registry=registry)
    tally = metrics.Tally(tallied)
    # Values on bucket edges (a bucket holds values <= its bound), between them, and beyond the last.
    values = [0.0, 0.0005, 0.00051, 0.001, 0.0033, 0.02, 0.02000001, 0.7, 1.0, 1.5, 30.0] * 3
    for value in values:
        one_by_one.observe(value)
        tally.add(value)
    tally.publish()
    tally.publish()                        # publishing again adds nothing: the tally starts over
    text = generate_latest(registry).decode()
    ours = {line.replace("tallied", "x") for line in text.splitlines() if line.startswith("tallied_seconds_")
            and "_created" not in line}
    theirs = {line.replace("one_by_one", "x") for line in text.splitlines() if line.startswith("one_by_one_seconds_")
              and "_created" not in line}
    assert ours == theirs and len(ours) == len(metrics.FRAME_BUCKETS) + 3    # buckets, +Inf, count, sum


def test_label_values_outside_their_fixed_sets_become_other():
    metrics.stream_refused("twilio", "+15551234567 refused because of a long free text")
    metrics.frames_dropped("twilio", "who knows")
    metrics.campaign_attempt_ended("labels-test", "+15551234567")
    metrics.CallMetrics("twilio", "test-en", "gpt-nonsense").ended("+15551234567", None, 0)
    text = generate_latest().decode()
    assert "+15551234567" not in text and "free text" not in text and "gpt-nonsense" not in text
    scraped = Scrape(text)
    assert scraped.value("voicebot_stream_refusals_total", carrier="twilio", reason="other") >= 1
    assert scraped.value("voicebot_frames_dropped_total", carrier="twilio", reason="other") >= 1
    assert scraped.value("voicebot_campaign_attempts_total", campaign="labels-test", outcome="other") == 1
    assert scraped.value("voicebot_calls_total", carrier="twilio", outcome="other") >= 1


# -- helpers ----------------------------------------------------------------------------------------------------

async def _twilio_stream(base_url: str, call_sid: str) -> tuple[str, dict]:
    """The stream URL and parameters (with a genuine token) our voice webhook hands Twilio for ``call_sid``."""
    url = base_url + "/twilio/voice"
    form = {"CallSid": call_sid, "From": "+15005550006", "To": EN}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=form, headers={"X-Twilio-Signature": compute_signature(AUTH_TOKEN, url, form)}) \
                as resp:
            stream_url, params, _ = parse_twiml_stream(await resp.text())
    return stream_url, params


async def test_a_campaign_counts_its_dials_and_attempt_outcomes_as_the_carrier_saw_them(tmp_path):
    from voicebot.api.common import DATABASE
    from voicebot.config import TwilioSettings
    from voicebot.emulator.app import Emulator, start_emulator
    from voicebot.simulator.carrier_api import FakeTwilioApi
    from voicebot.simulator.carrier_api.callees import Busy, Human, speech

    from campaign_setup import (ACCOUNT_SID, OUR_NUMBERS, create_and_start, dials_to, reminder_persona,
                                write_campaign, write_plans)

    human, busy = "+12125550111", "+12125550112"
    emu_runner, emulator = await start_emulator("127.0.0.1", 0, Emulator(speed=3.0))
    fake = FakeTwilioApi(ACCOUNT_SID, AUTH_TOKEN, owned_numbers=OUR_NUMBERS)
    await fake.start()
    fake.callees.update({human: Human(script=(Say(speech("Hello?"), at_s=0.3), Hangup(after_bot_done=True,
                                                                                        pause_s=0.3))),
                         busy: Busy()})
    plans = write_plans(tmp_path, reminder_persona(directive="Answer briefly."))
    path = write_campaign(tmp_path, "metrics-reminders", [
        {"phone": human, "first_name": "Ann", "appointment": "Monday at 9"},
        {"phone": busy, "first_name": "Bob", "appointment": "Tuesday at 10"}])
    twilio = TwilioSettings(validate_signatures=True, auth_token=AUTH_TOKEN, account_sid=ACCOUNT_SID,
                            api_base_url=fake.base_url)
    runner, settings, app = await start_voice_server(tmp_path, plans, emulator, twilio=twilio)
    try:
        before = await scrape(settings.public_url)
        store = app[DATABASE].store
        await create_and_start(store, path, plans)
        app[SERVICES].campaigns.dialer.wake()

        async def done() -> bool:
            return (await store.get_campaign("metrics-reminders")).state == "done"
        await until(done, timeout=60, what="the campaign done")
        await until(lambda: not app[SERVICES].calls, what="the campaign call to finish")
        after = await scrape(settings.public_url)
    finally:
        await runner.cleanup()
        await fake.close()
        await emu_runner.cleanup()

    assert (dials_to(fake, human), dials_to(fake, busy)) == (1, 2)     # busy is retried once
    campaign = {"campaign": "metrics-reminders"}
    assert delta(after, before, "voicebot_campaign_dials_total", **campaign) == 3
    assert delta(after, before, "voicebot_campaign_attempts_total", **campaign, outcome="answered") == 1
    assert delta(after, before, "voicebot_campaign_attempts_total", **campaign, outcome="busy") == 2
    assert delta(after, before, "voicebot_campaign_attempts_total", **campaign) == 3
    # The answered attempt was a call like any other, with the campaign's persona.
    assert delta(after, before, "voicebot_calls_total", carrier="twilio") == 1
    assert after.value("voicebot_active_calls", persona="reminders") == 0
