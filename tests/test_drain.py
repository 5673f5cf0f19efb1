"""Draining, in the server's own process (the stop signal's handler called as the signal would): calls in progress
go on and end by themselves, or hear the persona's goodbye at server.drain_seconds; a second stop, or
drain_seconds 0, ends them at once; /readyz fails from the first moment; the campaign dialer stops dialing;
every record reaches the database. voicebot serve under real signals: test_drain_serve.py."""

from __future__ import annotations

import asyncio

import pytest
import structlog

from voicebot.emulator.app import Emulator, start_emulator
from voicebot.server import DRAIN, SERVICES
from voicebot.simulator.caller import Hangup, Say
from voicebot.simulator.twilio import simulate_twilio_call
from voicebot.store import Store

from conftest import AUTH_TOKEN, start_voice_server, until
from drain_checks import DRAIN_LINE, GOODBYE, GREETING, assert_goodbye_heard_then_closed, persona, readyz
from metrics_scrape import scrape


@pytest.fixture
async def emulator():
    runner, emulator = await start_emulator("127.0.0.1", 0, Emulator(speed=3.0))
    yield emulator
    await runner.cleanup()


async def serving(tmp_path, emulator, *, goodbye: str | None = GOODBYE, **overrides):
    plans = tmp_path / "dialplans"
    plans.mkdir()
    (plans / "drain.yaml").write_text(persona(goodbye=goodbye))
    return await start_voice_server(tmp_path, plans, emulator, **overrides)


async def records_of(settings) -> list:
    """Every call record in the server's database (read after the server stopped), with its transcript."""
    store = await Store.open(settings.database_url)
    try:
        summaries, _ = await store.list_calls()
        return [await store.get_call(summary.id) for summary in summaries]
    finally:
        await store.close()


def said(record) -> list[tuple[str, str]]:
    return [(turn["role"], turn["text"]) for turn in record.transcript]


def one_log(logs: list[dict], event: str) -> dict:
    found = [entry for entry in logs if entry["event"] == event]
    assert len(found) == 1, (event, found)
    return found[0]


async def test_a_call_ending_by_itself_during_the_drain_ends_it_early(tmp_path, emulator, caller_en):
    """drain_seconds 30: the call in progress is answered as usual, the caller hangs up, and the drain ends then
    rather than 30 s later; /readyz fails from the start; the record is in the database."""
    runner, settings, app = await serving(tmp_path, emulator, drain_seconds=30.0)
    services, drain = app[SERVICES], app[DRAIN]
    with structlog.testing.capture_logs() as logs:
        try:
            assert await readyz(settings.public_url) == (200, {"status": "ready"})
            call = asyncio.create_task(simulate_twilio_call(
                settings.public_url, to=DRAIN_LINE, auth_token=AUTH_TOKEN, max_duration_s=30,
                script=[Say(caller_en, after_bot_done=True, pause_s=0.3, label="question"),
                        Hangup(after_bot_done=True, pause_s=0.5)]))
            await until(lambda: services.calls, what="the call to start")
            began = asyncio.get_running_loop().time()
            drain.stop("SIGTERM")
            status, body = await readyz(settings.public_url)
            assert status == 503 and body["status"] == "not ready"
            assert [r for r in body["reasons"] if r.startswith("draining")]
            assert (await scrape(settings.public_url)).value("voicebot_draining") == 1
            result = await call
            await asyncio.wait_for(drain.finished.wait(), 10)
            drained_s = asyncio.get_running_loop().time() - began
        finally:
            await runner.cleanup()
    assert result.end_reason == "hangup" and result.protocol_errors == []
    question = result.utterances[0]
    assert [s for s in result.segments if s.start_s > question.end_s], "no reply heard during the drain"
    assert drained_s < 15, f"the drain waited {drained_s:.1f} s for a call that had ended"
    finished = one_log(logs, "drain_finished")
    assert (finished["calls_ended_by_themselves"], finished["calls_ended_at_deadline"],
            finished["calls_ended_at_once"]) == (1, 0, 0)
    assert one_log(logs, "drain_started")["calls"] == 1
    (record,) = await records_of(settings)
    assert record.outcome == "completed" and said(record)[0] == ("assistant", GREETING)
    assert [role for role, _ in said(record)] == ["assistant", "user", "assistant"]


@pytest.mark.parametrize("goodbye", [GOODBYE, ""], ids=["goodbye", "no-goodbye"])
async def test_at_drain_seconds_the_call_hears_the_goodbye_and_ends(tmp_path, emulator, caller_en, goodbye):
    """drain_seconds 3: the caller is still on the line; the bot says the persona's goodbye (a persona without
    one just ends), the stream closes after it played, and the record says so."""
    runner, settings, app = await serving(tmp_path, emulator, goodbye=goodbye, drain_seconds=3.0)
    services, drain = app[SERVICES], app[DRAIN]
    with structlog.testing.capture_logs() as logs:
        try:
            call = asyncio.create_task(simulate_twilio_call(
                settings.public_url, to=DRAIN_LINE, auth_token=AUTH_TOKEN, max_duration_s=40,
                script=[Hangup(at_s=35)]))
            await until(lambda: services.calls, what="the call to start")
            stopped = asyncio.get_running_loop().time()
            drain.stop("SIGTERM")
            result = await call
            await asyncio.wait_for(drain.finished.wait(), 10)
        finally:
            await runner.cleanup()
    deadline_s = stopped - result.t0 + 3.0           # the drain deadline in the caller's time
    assert result.end_reason == "server_closed" and result.protocol_errors == []
    assert deadline_s - 0.3 < result.duration_s < deadline_s + 8
    (record,) = await records_of(settings)
    assert record.outcome == "drained" and "drain_seconds (3 s)" in record.end_reason
    if goodbye:
        assert all(s.end_s < deadline_s for s in result.segments[:1])    # the greeting, before
        assert_goodbye_heard_then_closed(result, deadline_s)
        assert said(record) == [("assistant", GREETING), ("assistant", GOODBYE)]
    else:
        assert all(s.start_s < deadline_s for s in result.segments)      # nothing said at the deadline
        assert said(record) == [("assistant", GREETING)]
    finished = one_log(logs, "drain_finished")
    assert (finished["calls_ended_by_themselves"], finished["calls_ended_at_deadline"],
            finished["calls_ended_at_once"]) == (0, 1, 0)


@pytest.mark.parametrize("how", ["second signal", "drain_seconds 0"])
async def test_a_second_stop_or_drain_seconds_0_ends_calls_at_once(tmp_path, emulator, how):
    runner, settings, app = await serving(tmp_path, emulator,
                                          drain_seconds=30.0 if how == "second signal" else 0.0)
    services, drain = app[SERVICES], app[DRAIN]
    loop = asyncio.get_running_loop()
    with structlog.testing.capture_logs() as logs:
        try:
            call = asyncio.create_task(simulate_twilio_call(
                settings.public_url, to=DRAIN_LINE, auth_token=AUTH_TOKEN, max_duration_s=40,
                script=[Hangup(at_s=35)]))
            await until(lambda: services.calls, what="the call to start")
            drain.stop("SIGTERM")
            if how == "second signal":
                await asyncio.sleep(1.0)
                assert services.calls, "the first stop alone ended the call"
                drain.stop("SIGINT")
            ended_at = loop.time()
            result = await call
            cut_after_s = result.t0 + result.duration_s - ended_at
            await asyncio.wait_for(drain.finished.wait(), 10)
        finally:
            await runner.cleanup()
    assert result.end_reason == "server_closed" and cut_after_s < 3.0
    (record,) = await records_of(settings)
    assert record.outcome == "drained" and GOODBYE not in [text for _, text in said(record)]
    assert ("stopped again during the drain" if how == "second signal" else "drain_seconds is 0") in record.end_reason
    finished = one_log(logs, "drain_finished")
    assert (finished["calls_ended_by_themselves"], finished["calls_ended_at_deadline"],
            finished["calls_ended_at_once"]) == (0, 0, 1)


async def test_the_campaign_dialer_stops_dialing_when_the_drain_starts(tmp_path, emulator):
    """A running campaign with contacts still due: from the stop signal on, not one more dial reaches the
    carrier (it dials 4 a second otherwise)."""
    from voicebot.api.common import DATABASE
    from voicebot.config import TwilioSettings
    from voicebot.simulator.carrier_api import FakeTwilioApi
    from voicebot.simulator.carrier_api.callees import Busy

    from campaign_setup import ACCOUNT_SID, OUR_NUMBERS, create_and_start, reminder_persona, write_campaign, write_plans

    fake = FakeTwilioApi(ACCOUNT_SID, AUTH_TOKEN, owned_numbers=OUR_NUMBERS)
    await fake.start()
    contacts = [{"phone": f"+1212555{n:04d}", "first_name": "Ann", "appointment": "Monday"} for n in range(200, 240)]
    fake.callees.update({row["phone"]: Busy() for row in contacts})
    plans = write_plans(tmp_path, reminder_persona(directive="Say goodbye."))
    path = write_campaign(tmp_path, "drain", contacts, concurrency=40, rate=4.0, voicemail=None, retry="")
    twilio = TwilioSettings(validate_signatures=True, auth_token=AUTH_TOKEN, account_sid=ACCOUNT_SID,
                            api_base_url=fake.base_url)
    runner, settings, app = await start_voice_server(tmp_path, plans, emulator, twilio=twilio, drain_seconds=30.0)
    try:
        await create_and_start(app[DATABASE].store, path, plans)
        app[SERVICES].campaigns.dialer.wake()
        await until(lambda: len(fake.dialled) >= 3, timeout=20, what="the campaign dialing")
        app[DRAIN].stop("SIGTERM")
        await asyncio.sleep(0.3)                # a dial request already on its way may still arrive
        dialled_at_drain = len(fake.dialled)
        await asyncio.sleep(2.0)                # 8 dial slots at 4 a second
        assert len(fake.dialled) == dialled_at_drain < len(contacts)
        await asyncio.wait_for(app[DRAIN].finished.wait(), 10)
    finally:
        await runner.cleanup()
        await fake.close()
