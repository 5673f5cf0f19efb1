"""End to end: campaigns dialled by the real server through the fake carriers' REST side, callees that answer,
go to voicemail, are busy or do not answer; status and AMD callbacks signed for real; answered calls streamed into
the server and answered by the emulated model."""

from __future__ import annotations

from datetime import datetime, timezone
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo

import aiohttp
import numpy as np
import pytest
import sqlalchemy as sa

from voicebot.api.common import DATABASE
from voicebot.audio import RATE
from voicebot.campaigns.clock import ShiftedClock
from voicebot.config import TwilioSettings
from voicebot.emulator.app import Emulator, start_emulator
from voicebot.server import SERVICES
from voicebot.simulator.caller import Hangup, Say
from voicebot.simulator.carrier_api import FakeTwilioApi
from voicebot.telephony.twilio_auth import compute_signature
from voicebot.simulator.carrier_api.callees import Busy, Failed, Human, NoAnswer, Voicemail, speech

from campaign_setup import (ACCOUNT_SID, CONFIRM_LINE, OPT_OUT_LINE, OUR_NUMBERS, create_and_start, dials_to,
                            reminder_persona, write_campaign, write_plans)
from conftest import AUTH_TOKEN, start_voice_server, until

HUMAN, MACHINE, BUSY, SILENT, GONE, BLOCKED = ("+12125550101", "+12125550102", "+12125550103", "+12125550104",
                                                "+12125550105", "+12125550106")
# Persona texts are templates on campaign calls: literal braces are doubled.
CONFIRM = f'On caller turn 1, say "{CONFIRM_LINE}" and call set_outcome {{{{"outcome": "confirmed", "note": "will come"}}}}.'


def rms(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if len(pcm) else 0.0


def answering_human() -> Human:
    return Human(script=(Say(speech("Hello? Who is this?"), at_s=0.3, label="hello"),
                         Say(speech("Yes, I will be there."), after_bot_done=True, pause_s=0.4, label="yes"),
                         Hangup(after_bot_done=True, pause_s=1.0)))


@pytest.fixture
async def emulator():
    runner, emulator = await start_emulator("127.0.0.1", 0, Emulator(speed=3.0))
    yield emulator
    await runner.cleanup()


@pytest.fixture
async def twilio_fake():
    fake = FakeTwilioApi(ACCOUNT_SID, AUTH_TOKEN, owned_numbers=OUR_NUMBERS)
    await fake.start()
    yield fake
    await fake.close()


async def serve(tmp_path, emulator, fake, plans, *, clock=None):
    twilio = TwilioSettings(validate_signatures=True, auth_token=AUTH_TOKEN, account_sid=ACCOUNT_SID,
                            api_base_url=fake.base_url)
    runner, settings, app = await start_voice_server(tmp_path, plans, emulator, twilio=twilio)
    if clock is not None:
        app[SERVICES].campaigns.use_clock(clock)
    return runner, app


async def state_is(store, name: str, state: str) -> bool:
    return (await store.get_campaign(name)).state == state


async def test_twilio_campaign_every_outcome_limits_retries_dnc_voicemail(tmp_path, emulator, twilio_fake):
    fake = twilio_fake
    fake.callees.update({HUMAN: answering_human(), MACHINE: Voicemail(), BUSY: Busy(), SILENT: NoAnswer(),
                         BLOCKED: Failed(sip=404)})
    plans = write_plans(tmp_path, reminder_persona(directive=CONFIRM))
    path = write_campaign(tmp_path, "reminders-all", [
        {"phone": "(212) 555-0101", "first_name": "Ann", "appointment": "Monday at 9"},
        {"phone": "212-555-0102", "first_name": "Bob", "appointment": "Tuesday at 10"},
        {"phone": "+1 212 555 0103", "first_name": "Cy", "appointment": "Wednesday at 11"},
        {"phone": "2125550104", "first_name": "Di", "appointment": "Thursday at 12"},
        {"phone": "212.555.0105", "first_name": "Ed", "appointment": "Friday at 1"},
        {"phone": "12125550106", "first_name": "Flo", "appointment": "Friday at 2"},
    ])
    runner, app = await serve(tmp_path, emulator, fake, plans)
    try:
        store = app[DATABASE].store
        await store.dnc_add(GONE, source="cli", now=datetime.now(timezone.utc))
        campaign_id = await create_and_start(store, path, plans)
        app[SERVICES].campaigns.dialer.wake()
        await until(lambda: state_is(store, "reminders-all", "done"), timeout=90, what="the campaign done")
        rows = {row["phone"]: row for row in await store.export_rows(campaign_id)}
        async with store.engine.connect() as conn:
            slot_times = (await conn.execute(sa.text("SELECT dial_at FROM attempts WHERE campaign_id = :c"),
                                             {"c": campaign_id})).scalars().all()
    finally:
        await runner.cleanup()

    # What was dialled, measured at the carrier: the policy's attempts, never the do-not-call number.
    assert {n: dials_to(fake, n) for n in (HUMAN, MACHINE, BUSY, SILENT, GONE, BLOCKED)} == \
        {HUMAN: 1, MACHINE: 1, BUSY: 2, SILENT: 1, GONE: 0, BLOCKED: 2}
    assert fake.max_live_seen <= 2
    slots = np.diff(sorted(slot_times))
    assert slots.min() >= 0.5 - 1e-6, f"dial slots closer than 1/calls_per_second: {slots}"
    arrivals = np.array(sorted(fake.dial_times))      # arrival times jitter with load: dials per 2 s
    assert max(int(np.searchsorted(arrivals, t + 2.0)) - i for i, t in enumerate(arrivals)) <= 2 * 2 + 1
    assert {n: (r["outcome"], int(r["attempts"])) for n, r in rows.items()} == {
        HUMAN: ("confirmed", 1), MACHINE: ("voicemail", 1), BUSY: ("busy", 2), SILENT: ("no-answer", 1),
        GONE: ("dnc", 0), BLOCKED: ("failed", 2)}
    assert rows[HUMAN]["note"] == "will come" and rows[HUMAN]["first_name"] == "Ann"

    # The human: nothing said before the AMD verdict, then the greeting with the contact's variables.
    human = next(call for call in fake.dialled.values() if call.to == HUMAN)
    verdict = next(cb for cb in human.callbacks if "AnsweredBy=human" in cb.body)
    assert verdict.status == 204
    media = human.result
    first_heard = media.first_bot_audio_s
    assert first_heard is not None and media.t0 + first_heard >= verdict.at - 0.05
    # The voicemail: silent through the greeting and the beep; the message after the beep, then the hang-up.
    machine = next(call for call in fake.dialled.values() if call.to == MACHINE)
    beep_end, after = machine.after_beep
    before = machine.result.heard[:int(beep_end * RATE)]
    assert rms(before) < 30, "the bot spoke into the voicemail greeting"
    assert rms(after) > 300, "no voicemail message after the beep"


def hello_then_hang_up() -> Human:
    return Human(script=(Say(speech("Hello?"), at_s=0.3, label="hello"),
                         Hangup(after_bot_done=True, pause_s=0.3)))


async def contact_due(store, phone: str) -> datetime | None:
    async with store.engine.connect() as conn:
        value = (await conn.execute(sa.text("SELECT next_due_at FROM contacts WHERE phone = :p"), {"p": phone})).scalar()
    if value is None:
        return None
    value = datetime.fromisoformat(str(value)) if not isinstance(value, datetime) else value
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


async def attempts_of(store, campaign_id: str) -> list:
    async with store.engine.connect() as conn:
        rows = (await conn.execute(sa.text("SELECT phone, dialing_at, outcome FROM attempts WHERE campaign_id = :c"),
                                   {"c": campaign_id})).all()
    return rows


async def test_windows_in_each_contacts_time_zone_across_the_dst_change(tmp_path, emulator, twilio_fake):
    """2026-11-02 (Monday after New York left daylight time), 13:30 UTC: 14:30 in Berlin (open), 08:30 in New York
    (closed; 09:30 had the change been missed), 22:30 in Tokyo (closed). Only Berlin is dialled; New York at its
    09:00 EST = 14:00 UTC, Tokyo at Tuesday 09:00 JST = 00:00 UTC."""
    fake = twilio_fake
    NY, BERLIN, TOKYO = "+12125550111", "+493012345678", "+81312345678"
    for number in (NY, BERLIN, TOKYO):
        fake.callees[number] = hello_then_hang_up()
    plans = write_plans(tmp_path, reminder_persona(directive=""))
    path = write_campaign(tmp_path, "windows", [
        {"phone": NY, "first_name": "Ann", "appointment": "Monday", "timezone": "America/New_York"},
        {"phone": BERLIN, "first_name": "Bea", "appointment": "Montag", "timezone": "Europe/Berlin"},
        {"phone": TOKYO, "first_name": "Chi", "appointment": "Getsuyoubi", "timezone": "Asia/Tokyo"},
    ], voicemail=None, window='window: {days: [mon, tue, wed, thu, fri], start: "09:00", end: "17:00"}')
    clock = ShiftedClock(datetime(2026, 11, 2, 13, 30, tzinfo=timezone.utc))
    runner, app = await serve(tmp_path, emulator, fake, plans, clock=clock)
    try:
        store = app[DATABASE].store
        campaign_id = await create_and_start(store, path, plans, now=clock.now())
        app[SERVICES].campaigns.dialer.wake()
        await until(lambda: dials_to(fake, BERLIN) == 1, timeout=20, what="Berlin dialled")
        ny_opens, tokyo_opens = datetime(2026, 11, 2, 14, 0, tzinfo=timezone.utc), \
            datetime(2026, 11, 3, 0, 0, tzinfo=timezone.utc)

        async def deferred() -> bool:
            return await contact_due(store, NY) == ny_opens and await contact_due(store, TOKYO) == tokyo_opens
        await until(deferred, timeout=20, what="New York and Tokyo deferred to their window openings")
        assert dials_to(fake, NY) == dials_to(fake, TOKYO) == 0
        clock.advance((ny_opens - clock.now()).total_seconds() + 1)
        await until(lambda: dials_to(fake, NY) == 1, timeout=20, what="New York dialled at 09:00 EST")
        assert dials_to(fake, TOKYO) == 0
        clock.advance((tokyo_opens - clock.now()).total_seconds() + 1)
        await until(lambda: dials_to(fake, TOKYO) == 1, timeout=20, what="Tokyo dialled at 09:00 JST")
        await until(lambda: state_is(store, "windows", "done"), timeout=30, what="the campaign done")
        dialled = {phone: dialing_at for phone, dialing_at, _ in await attempts_of(store, campaign_id)}
    finally:
        await runner.cleanup()
    zones = {NY: "America/New_York", BERLIN: "Europe/Berlin", TOKYO: "Asia/Tokyo"}
    for phone, at in dialled.items():
        at = datetime.fromisoformat(str(at)).replace(tzinfo=timezone.utc) if not isinstance(at, datetime) else at
        local = at.astimezone(ZoneInfo(zones[phone]))
        assert local.weekday() < 5 and 9 <= local.hour < 17, f"{phone} dialled at {local.isoformat()}"


async def test_opt_out_during_a_call_puts_the_number_on_do_not_call(tmp_path, emulator, twilio_fake):
    fake = twilio_fake
    NUMBER = "+12125550121"
    fake.callees[NUMBER] = Human(script=(Say(speech("Hello?"), at_s=0.3, label="hello"),
                                         Say(speech("Please stop calling me."), after_bot_done=True, pause_s=0.4),
                                         Hangup(after_bot_done=True, pause_s=3.0)))
    plans = write_plans(tmp_path, reminder_persona(directive=f'On caller turn 1, say "{OPT_OUT_LINE}" and call opt_out {{{{}}}}.'))
    first = write_campaign(tmp_path, "first", [{"phone": NUMBER, "first_name": "Gil", "appointment": "soon"}],
                           voicemail=None, retry="retry: {no-answer: {retries: 3, after: 1s}}")
    second = write_campaign(tmp_path, "second", [{"phone": NUMBER, "first_name": "Gil", "appointment": "later"}],
                            voicemail=None)
    runner, app = await serve(tmp_path, emulator, fake, plans)
    try:
        store = app[DATABASE].store
        first_id = await create_and_start(store, first, plans)
        app[SERVICES].campaigns.dialer.wake()
        await until(lambda: state_is(store, "first", "done"), timeout=40, what="the first campaign done")
        assert await store.dnc_contains(NUMBER)
        second_id = await create_and_start(store, second, plans)
        app[SERVICES].campaigns.dialer.wake()
        await until(lambda: state_is(store, "second", "done"), timeout=20, what="the second campaign done")
        first_rows = await store.export_rows(first_id)
        second_rows = await store.export_rows(second_id)
    finally:
        await runner.cleanup()
    assert dials_to(fake, NUMBER) == 1
    assert [(r["outcome"], int(r["attempts"])) for r in first_rows] == [("dnc", 1)]
    assert [(r["outcome"], int(r["attempts"])) for r in second_rows] == [("dnc", 0)]
    # The goodbye was heard in full before the hang-up.
    call = next(iter(fake.dialled.values()))
    assert call.result is not None and call.result.bot_played_ms > 1500


async def test_forged_and_replayed_callbacks_change_nothing(tmp_path, emulator, twilio_fake):
    fake = twilio_fake
    NUMBER = "+12125550131"
    fake.callees[NUMBER] = NoAnswer()
    plans = write_plans(tmp_path, reminder_persona(directive=""))
    path = write_campaign(tmp_path, "forged", [{"phone": NUMBER, "first_name": "Hal", "appointment": "soon"}],
                          voicemail=None)
    runner, app = await serve(tmp_path, emulator, fake, plans)
    try:
        store = app[DATABASE].store
        campaign_id = await create_and_start(store, path, plans)
        app[SERVICES].campaigns.dialer.wake()
        ringing = await fake.wait_for_callback(lambda cb: "CallStatus=ringing" in cb.body, timeout=20)
        assert ringing.status == 204
        call = next(iter(fake.dialled.values()))
        url = ringing.url
        form = {"CallSid": call.call_id, "AccountSid": ACCOUNT_SID, "CallStatus": "completed", "CallDuration": "42",
                "SequenceNumber": "9", "To": NUMBER, "From": call.from_, "Direction": "outbound-api",
                "ApiVersion": "2010-04-01"}
        async with aiohttp.ClientSession() as http:
            async def post(target, data, signature):
                async with http.post(target, data=data, headers={"X-Twilio-Signature": signature}) as response:
                    return response.status
            assert await post(url, form, "forged") == 403
            assert await post(url, form, compute_signature("another-token", url, form)) == 403
            other = url.split("?attempt=")[0] + "?attempt=0123456789abcdef.bm90LXNpZ25lZA"
            assert await post(other, form, compute_signature(AUTH_TOKEN, other, form)) == 403
            attempt = (await attempts_of(store, campaign_id))[0]
            assert attempt[2] is None, "a refused callback ended the attempt"
            # The genuine ringing callback again: refused as a replay, nothing changes.
            assert await post(url, dict(parse_qsl(ringing.body)),
                              ringing.headers["X-Twilio-Signature"]) == 403
        await until(lambda: state_is(store, "forged", "done"), timeout=30, what="the campaign done")
        rows = await store.export_rows(campaign_id)
    finally:
        await runner.cleanup()
    assert [(r["outcome"], int(r["attempts"])) for r in rows] == [("no-answer", 1)]


async def test_telnyx_campaign_human_voicemail_and_busy(tmp_path, emulator, monkeypatch):
    from voicebot.simulator.carrier_api import FakeTelnyxApi

    key, connection, stream_token = "KEYtelnyx-campaign-e2e", "1494404757140276705", "telnyx-stream-token-e2e-4b1"
    fake = FakeTelnyxApi(key, connection_ids={connection})
    await fake.start()
    monkeypatch.setenv("TELNYX_API_KEY", key)
    monkeypatch.setenv("TELNYX_PUBLIC_KEY", fake.public_key_b64)
    monkeypatch.setenv("TELNYX_STREAM_TOKEN", stream_token)
    fake.callees.update({HUMAN: answering_human(), MACHINE: Voicemail(), BUSY: Busy()})
    plans = write_plans(tmp_path, reminder_persona(directive=CONFIRM))
    path = write_campaign(tmp_path, "telnyx-reminders", [
        {"phone": HUMAN, "first_name": "Ann", "appointment": "Monday at 9"},
        {"phone": MACHINE, "first_name": "Bob", "appointment": "Tuesday at 10"},
        {"phone": BUSY, "first_name": "Cy", "appointment": "Wednesday at 11"},
    ], carrier="telnyx", retry="retry: {busy: {retries: 1, after: 1s}}")
    runner, settings, app = await start_voice_server(
        tmp_path, plans, emulator,
        carriers={"telnyx": {"call_control": {"api_base_url": fake.base_url, "connection_id": connection}}})
    try:
        store = app[DATABASE].store
        campaign_id = await create_and_start(store, path, plans)
        app[SERVICES].campaigns.dialer.wake()
        await until(lambda: state_is(store, "telnyx-reminders", "done"), timeout=90, what="the campaign done")
        rows = {row["phone"]: row for row in await store.export_rows(campaign_id)}
        records = {r.to_number: r for r in (await store.list_calls(limit=10))[0]}
    finally:
        await runner.cleanup()
        await fake.close()
    assert {n: (r["outcome"], int(r["attempts"])) for n, r in rows.items()} == {
        HUMAN: ("confirmed", 1), MACHINE: ("voicemail", 1), BUSY: ("busy", 2)}
    dial = next(r for r in fake.requests if r.method == "POST" and r.path == "/v2/calls")
    assert dial.json["answering_machine_detection"] and dial.json["connection_id"] == connection
    # Every webhook was genuine and accepted.
    assert all(cb.status == 204 for call in fake.dialled.values() for cb in call.callbacks)
    machine = next(call for call in fake.dialled.values() if call.to == MACHINE)
    beep_end, after = machine.after_beep
    assert rms(machine.result.heard[:int(beep_end * RATE)]) < 30 and rms(after) > 300
    human = records[HUMAN]
    assert human.direction == "outbound" and human.campaign_id == campaign_id and human.attempt_id
    assert rows[HUMAN]["call_ids"] == human.id
