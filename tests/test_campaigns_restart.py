"""A campaign survives ``kill -9`` of its server: the restarted server resumes it exactly. Every contact gets the
dials its retry policy allows (counted at the carrier), none twice; calls that ended while the server was down are
settled by asking the carrier (their callbacks were lost)."""

from __future__ import annotations

import signal

import sqlalchemy as sa

from voicebot.simulator.caller import Hangup, Say
from voicebot.simulator.carrier_api import FakeTwilioApi
from voicebot.simulator.carrier_api.callees import Busy, Human, NoAnswer, speech
from voicebot.store import Store

from campaign_setup import (ACCOUNT_SID, OUR_NUMBERS, create_and_start, dials_to, reminder_persona, serve_process,
                            server_config, stop_process, wait_up, write_campaign, write_plans)
from conftest import AUTH_TOKEN, listening_socket, until

HUMANS = [f"+1212555020{i}" for i in range(4)]
BUSY = [f"+1212555021{i}" for i in range(3)]
SILENT = [f"+1212555022{i}" for i in range(3)]
EXPECTED_DIALS = {**{n: 1 for n in HUMANS}, **{n: 2 for n in BUSY}, **{n: 2 for n in SILENT}}


def free_port() -> int:
    with listening_socket() as sock:
        return sock.getsockname()[1]


async def test_kill_9_mid_campaign_then_restart_gives_every_contact_exactly_its_dials(tmp_path):
    fake = FakeTwilioApi(ACCOUNT_SID, AUTH_TOKEN, owned_numbers=OUR_NUMBERS)
    await fake.start()
    for number in HUMANS:
        fake.callees[number] = Human(script=(Say(speech("Hello?"), at_s=0.3),
                                             Hangup(after_bot_done=True, pause_s=0.5)), max_duration_s=15)
    for number in BUSY:
        fake.callees[number] = Busy()
    for number in SILENT:
        fake.callees[number] = NoAnswer()
    plans = write_plans(tmp_path, reminder_persona(directive=""))
    path = write_campaign(tmp_path, "restart", [
        {"phone": number, "first_name": f"N{i}", "appointment": "soon"}
        for i, number in enumerate(HUMANS + BUSY + SILENT)],
        voicemail=None, concurrency=3, rate=2.0,
        retry="retry: {busy: {retries: 1, after: 2s}, no-answer: {retries: 1, after: 1s}}")
    database_url = f"sqlite:///{tmp_path / 'campaigns.db'}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = server_config(tmp_path, "server", port, plans=plans, database_url=database_url,
                           twilio_api=fake.base_url)
    first = serve_process(config, AUTH_TOKEN)
    store = None
    second = None
    try:
        await wait_up(url, first)
        store = await Store.open(database_url)
        campaign_id = await create_and_start(store, path, plans)

        def mid_campaign() -> bool:
            answered = [call for call in fake.dialled.values() if call.answered_at is not None and call.live]
            return len(fake.dialled) >= 5 and bool(answered)
        await until(mid_campaign, timeout=60, what="five dials and a call in progress")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        live_at_kill = [call.call_id for call in fake.dialled.values() if call.live]

        second = serve_process(config, AUTH_TOKEN)
        await wait_up(url, second)

        async def done() -> bool:
            return (await store.get_campaign("restart")).state == "done"
        await until(done, timeout=150, what="the campaign done after the restart")
        async with store.engine.connect() as conn:
            attempts = (await conn.execute(sa.text(
                "SELECT phone, carrier_call_id, state, outcome FROM attempts WHERE campaign_id = :c"),
                {"c": campaign_id})).all()
        rows = {row["phone"]: row for row in await store.export_rows(campaign_id)}
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                stop_process(proc)
        if store is not None:
            await store.close()
        await fake.close()

    assert {n: dials_to(fake, n) for n in EXPECTED_DIALS} == EXPECTED_DIALS
    assert {n: int(rows[n]["attempts"]) for n in EXPECTED_DIALS} == EXPECTED_DIALS
    # Each dial the carrier saw is exactly one attempt in the database, all settled.
    assert sorted(a.carrier_call_id for a in attempts) == sorted(fake.dialled)
    assert all(a.state == "ended" and a.outcome for a in attempts), attempts
    assert live_at_kill, "the kill did not catch a call in progress"
    assert {rows[n]["outcome"] for n in BUSY} == {"busy"} and {rows[n]["outcome"] for n in SILENT} == {"no-answer"}
