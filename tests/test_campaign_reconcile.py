"""The dial path and the reconciler on a real database and the fake Twilio API: a refused dial settles as failed, an
unanswered one stays unknown (never re-dialled blindly); after a crash, claims never sent are released, a request
whose answer was lost is found at the carrier or, once callbacks would surely have come, settled as failed; placed
calls whose callbacks were lost are asked about."""

from __future__ import annotations

from datetime import datetime, timezone

import aiohttp
import pytest
import sqlalchemy as sa

from voicebot.call import CallServices
from voicebot.campaigns.clock import ShiftedClock
from voicebot.campaigns.service import CampaignService
from voicebot.config import Settings, TwilioSettings
from voicebot.dialplan import load_dialplan
from voicebot.simulator.carrier_api import FakeTwilioApi
from voicebot.simulator.carrier_api.callees import Busy
from voicebot.store import Store
from voicebot.telephony.rest import call_control_for

from campaign_setup import ACCOUNT_SID, OUR_NUMBERS, create_and_start, reminder_persona, write_campaign, write_plans
from conftest import AUTH_TOKEN, until

NUMBERS = ["+12125550401", "+12125550402"]


@pytest.fixture
async def rig(tmp_path):
    fake = await FakeTwilioApi(ACCOUNT_SID, AUTH_TOKEN, owned_numbers=OUR_NUMBERS).start()
    fake.default_callee = Busy()
    plans = write_plans(tmp_path, reminder_persona(directive=""))
    settings = Settings(source="test", public_url="http://127.0.0.1:9", dialplans_dir=plans,
                        database_url=f"sqlite:///{tmp_path / 'voicebot.db'}",
                        twilio=TwilioSettings(auth_token=AUTH_TOKEN, account_sid=ACCOUNT_SID,
                                              api_base_url=fake.base_url))
    store = await Store.open(settings.database_url)
    http = aiohttp.ClientSession()
    services = CallServices(settings=settings, dialplan=load_dialplan(plans), make_engine=lambda *a, **k: None)
    services.controls = {"twilio": call_control_for("twilio", settings, http)}
    clock = ShiftedClock(datetime.now(timezone.utc))   # the carrier's clock and ours agree; ours can jump ahead
    service = CampaignService(store, services, clock=clock, run_dialer=False)
    await service.load_key()
    path = write_campaign(tmp_path, "reconcile", [{"phone": n, "first_name": "A", "appointment": "soon"}
                                                  for n in NUMBERS], voicemail=None,
                          retry="retry: {failed: {retries: 1, after: 1m}}")
    campaign_id = await create_and_start(store, path, plans, now=clock.now())

    class Rig:
        pass
    rig = Rig()
    rig.__dict__.update(fake=fake, store=store, service=service, clock=clock, campaign_id=campaign_id)
    yield rig
    await http.close()
    await store.close()
    await fake.close()


async def claim(rig):
    spec = rig.service.spec_of(await rig.store.get_campaign(rig.campaign_id))
    claims = await rig.store.claim(rig.campaign_id, now=rig.clock.now(), limit=1,
                                   due=rig.service.due_function(spec))
    assert len(claims) == 1
    return spec, claims[0]


async def attempt_row(rig, attempt_id):
    return await rig.store.attempt(attempt_id)


async def contact_attempts(rig, phone):
    async with rig.store.engine.connect() as conn:
        return (await conn.execute(sa.text("SELECT attempts, state FROM contacts WHERE phone = :p"),
                                   {"p": phone})).one()


async def test_a_refused_dial_is_failed_and_retried_per_policy(rig):
    spec, claimed = await claim(rig)
    rig.fake.owned_numbers.clear()        # Twilio refuses a From number that is not ours: 21210
    await rig.service.dial(spec, claimed)
    row = await attempt_row(rig, claimed.attempt_id)
    assert (row.state, row.outcome) == ("ended", "failed") and "21210" in row.detail
    assert await contact_attempts(rig, claimed.phone) == (1, "pending")


async def test_an_unanswered_dial_request_is_left_for_the_reconciler_not_redialled(rig):
    spec, claimed = await claim(rig)
    rig.fake.hold()                        # the carrier takes the request and never answers
    await rig.service.dial(spec, claimed)
    rig.fake.release()
    row = await attempt_row(rig, claimed.attempt_id)
    assert row.state == "dialing" and row.carrier_call_id is None and row.outcome is None
    # The carrier did place it: the reconciler finds it by number and time, and follows it from there.
    await until(lambda: any(c.to == claimed.phone for c in rig.fake.dialled.values()), what="the call placed")
    rig.clock.advance(rig.service.reconciler.dialing_grace_s + 1)
    await until(lambda: not any(c.live for c in rig.fake.dialled.values()), timeout=10, what="the busy call over")
    assert await rig.service.reconciler.pass_once() == 1
    row = await attempt_row(rig, claimed.attempt_id)
    placed = next(c for c in rig.fake.dialled.values() if c.to == claimed.phone)
    assert row.carrier_call_id == placed.call_id and (row.state, row.outcome) == ("ended", "busy")
    assert len(rig.fake.dialled) == 1


async def test_a_lost_request_not_at_the_carrier_fails_only_after_callbacks_would_have_come(rig):
    spec, claimed = await claim(rig)
    await rig.store.mark_dialing(claimed.attempt_id, now=rig.clock.now())   # crashed right after this
    reconciler = rig.service.reconciler
    rig.clock.advance(reconciler.dialing_grace_s + 1)
    assert await reconciler.pass_once() == 0
    assert (await attempt_row(rig, claimed.attempt_id)).state == "dialing"
    rig.clock.advance(reconciler.unknown_after_s)
    assert await reconciler.pass_once() == 1
    row = await attempt_row(rig, claimed.attempt_id)
    assert (row.state, row.outcome) == ("ended", "failed") and "carrier shows no such call" in row.detail
    assert rig.fake.dialled == {}


async def test_a_claim_never_sent_is_released(rig):
    _, claimed = await claim(rig)
    assert await contact_attempts(rig, claimed.phone) == (1, "in_flight")
    rig.clock.advance(rig.service.reconciler.claimed_grace_s + 1)
    assert await rig.service.reconciler.pass_once() == 1
    assert await attempt_row(rig, claimed.attempt_id) is None
    assert await contact_attempts(rig, claimed.phone) == (0, "pending")


async def test_at_startup_placed_calls_whose_callbacks_were_lost_are_asked_about(rig):
    spec, claimed = await claim(rig)
    await rig.service.dial(spec, claimed)   # the callbacks go to a server that is not there (public_url :9)
    placed = next(iter(rig.fake.dialled.values()))
    await rig.fake.wait_ended(placed.call_id, timeout=15)
    assert (await attempt_row(rig, claimed.attempt_id)).state == "dialed"
    assert await rig.service.reconciler.pass_once(startup=True) == 1
    row = await attempt_row(rig, claimed.attempt_id)
    assert (row.state, row.outcome) == ("ended", "busy")
    assert await contact_attempts(rig, claimed.phone) == (1, "done")     # busy is not retried in this campaign


async def test_a_carrier_that_cannot_dial_fails_the_attempt_at_once(rig):
    spec, claimed = await claim(rig)
    rig.service.client("twilio").dial_problem = "TWILIO_ACCOUNT_SID is not set"
    await rig.service.dial(spec, claimed)
    row = await attempt_row(rig, claimed.attempt_id)
    assert (row.state, row.outcome) == ("ended", "failed") and "TWILIO_ACCOUNT_SID" in row.detail
    assert rig.fake.requests == []
