"""Two ``voicebot serve`` instances share one campaign on one real PostgreSQL server (started by the test): both
dial, no contact is dialled twice, and the campaign's limits hold across them, measured at the carrier."""

from __future__ import annotations

from urllib.parse import urlsplit

import numpy as np
import sqlalchemy as sa

from voicebot.simulator.caller import Hangup, Say
from voicebot.simulator.carrier_api import FakeTwilioApi
from voicebot.simulator.carrier_api.callees import Busy, Human, speech
from voicebot.store import Store

from campaign_setup import (ACCOUNT_SID, OUR_NUMBERS, create_and_start, dials_to, reminder_persona, serve_process,
                            server_config, stop_process, wait_up, write_campaign, write_plans)
from conftest import AUTH_TOKEN, until
from databases import pg_url, postgres  # noqa: F401  (fixtures)
from test_campaigns_restart import free_port

HUMANS = [f"+1212555030{i}" for i in range(8)]
BUSY = [f"+1212555031{i}" for i in range(10)]
CONCURRENCY, RATE = 4, 4.0


async def test_two_instances_on_postgresql_never_double_dial_and_hold_the_limits(tmp_path, pg_url):  # noqa: F811
    fake = FakeTwilioApi(ACCOUNT_SID, AUTH_TOKEN, owned_numbers=OUR_NUMBERS)
    await fake.start()
    for number in HUMANS:
        fake.callees[number] = Human(script=(Say(speech("Hello?"), at_s=0.3),
                                             Hangup(after_bot_done=True, pause_s=0.3)), max_duration_s=15)
    for number in BUSY:
        fake.callees[number] = Busy(answer_after_s=1.0)
    plans = write_plans(tmp_path, reminder_persona(directive=""))
    path = write_campaign(tmp_path, "shared", [
        {"phone": number, "first_name": f"N{i}", "appointment": "soon"} for i, number in enumerate(HUMANS + BUSY)],
        voicemail=None, concurrency=CONCURRENCY, rate=RATE, retry="")
    ports = [free_port(), free_port()]
    servers = [serve_process(server_config(tmp_path, f"server{i}", port, plans=plans, database_url=pg_url,
                                           twilio_api=fake.base_url), AUTH_TOKEN)
               for i, port in enumerate(ports)]
    store = None
    try:
        for port, proc in zip(ports, servers):
            await wait_up(f"http://127.0.0.1:{port}", proc)
        store = await Store.open(pg_url)
        campaign_id = await create_and_start(store, path, plans)

        async def done() -> bool:
            return (await store.get_campaign("shared")).state == "done"
        await until(done, timeout=120, what="the shared campaign done")
        rows = await store.export_rows(campaign_id)
        async with store.engine.connect() as conn:
            slot_times = (await conn.execute(sa.text("SELECT dial_at FROM attempts WHERE campaign_id = :c"),
                                             {"c": campaign_id})).scalars().all()
    finally:
        for proc in servers:
            stop_process(proc)
        if store is not None:
            await store.close()
        await fake.close()

    assert {n: dials_to(fake, n) for n in HUMANS + BUSY} == {n: 1 for n in HUMANS + BUSY}
    assert sorted(int(r["attempts"]) for r in rows) == [1] * len(rows)
    assert fake.max_live_seen <= CONCURRENCY
    # The shared schedule: the slots both instances reserved are never closer than 1/calls_per_second.
    slots = np.diff(sorted(slot_times))
    assert slots.min() >= 1 / RATE - 1e-6, f"slots closer than 1/calls_per_second across the instances: {slots}"
    # At the carrier (arrival times jitter with load): no 2 s stretch holds more dials than the rate allows.
    arrivals = np.array(sorted(fake.dial_times))
    busiest = max(int(np.searchsorted(arrivals, t + 2.0, side="left")) - i for i, t in enumerate(arrivals))
    assert busiest <= 2.0 * RATE + 1, f"{busiest} dials within 2 s at the carrier"
    # Both instances dialled: each dial names its own server's Voice webhook.
    dialling_ports = {urlsplit(call.request["Url"]).port for call in fake.dialled.values()}
    assert dialling_ports == set(ports)
