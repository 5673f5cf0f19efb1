"""Campaigns in the store, on a real SQLite file and a real PostgreSQL server: claims hold the campaign's
concurrency and rate limits across connections and processes, never claim a contact twice nor a do-not-call
number nor a number live in another campaign; windows move contacts; retries follow the policy by outcome;
callbacks are applied in order only; the call's own result lands before or after the carrier's; status and
export show what happened."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import pytest

from voicebot.store import (CampaignExists, Claim, InvalidTransition, Store, UnknownCampaign)

from databases import database_url, pg_url, postgres, sqlite_url, store  # noqa: F401 (fixtures)

T0 = datetime(2026, 12, 1, 15, 0, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class Spec:
    """What the store takes from a CampaignSpec."""

    name: str = "reminders"
    carrier: str = "twilio"
    from_numbers: tuple[str, ...] = ("+15550002000", "+15550002001", "+15550002002")
    max_concurrent_calls: int = 10
    calls_per_second: float = 100.0
    retry: dict = field(default_factory=lambda: {"no-answer": (2, HOUR), "busy": (1, timedelta(minutes=20))})

    def to_json(self) -> dict:
        return {"name": self.name, "carrier": self.carrier, "from": list(self.from_numbers),
                "max_concurrent_calls": self.max_concurrent_calls, "calls_per_second": self.calls_per_second,
                "retry": {k: [n, d.total_seconds()] for k, (n, d) in self.retry.items()}}

    def retry_after(self, outcome: str, earlier: int) -> timedelta | None:
        retries, after = self.retry.get(outcome, (0, None))
        return after if earlier < retries else None


@dataclass(frozen=True)
class Contact:
    row: int
    phone: str
    timezone: str = "America/New_York"
    variables: dict = field(default_factory=dict)


def people(n: int, *, first: int = 0) -> list[Contact]:
    return [Contact(row=i + 2, phone=f"+1555123{first + i:04d}", variables={"first_name": f"Name{first + i}",
                                                                          "ref": f"R{i}"})
            for i in range(n)]


def always(tz: str, at: datetime) -> datetime:
    return at


async def running(store: Store, spec: Spec, contacts: list[Contact], *, now: datetime = T0) -> str:
    campaign_id = await store.create_campaign(spec, contacts, now=now)
    await store.set_campaign_state(spec.name, "running", now=now)
    return campaign_id


async def claim(store: Store, campaign_id: str, *, now: datetime = T0, limit: int = 100, horizon_s: float = 1.0,
                due=always) -> list[Claim]:
    return await store.claim(campaign_id, now=now, horizon_s=horizon_s, limit=limit, due=due)


async def dial(store: Store, claimed: Claim, *, now: datetime = T0, call: str | None = None) -> None:
    await store.mark_dialing(claimed.attempt_id, now=now)
    await store.mark_dialed(claimed.attempt_id, call or f"CA{claimed.attempt_id}", now=now)


async def finish(store: Store, spec: Spec, claimed: Claim, outcome: str, *, now: datetime = T0, due=always):
    return await store.finish_attempt(claimed.attempt_id, outcome=outcome, now=now, retry_after=spec.retry_after,
                                      due=due)


async def contact_of(store: Store, claimed: Claim):
    return (await store.outbound_context(claimed.attempt_id))[1]


# -- campaigns and their states --------------------------------------------------------------------------------

async def test_a_campaign_is_created_with_its_contacts_and_a_second_of_that_name_is_refused(store):
    spec = Spec()
    campaign_id = await store.create_campaign(spec, people(3), now=T0)
    row = await store.get_campaign("reminders")
    assert row == await store.get_campaign(campaign_id)
    assert (row.state, row.definition, row.carrier, row.from_numbers) == (
        "created", spec.to_json(), "twilio", list(spec.from_numbers))
    assert (row.max_concurrent_calls, row.calls_per_second, row.created_at) == (10, 100.0, T0)
    assert [c.name for c in await store.list_campaigns()] == ["reminders"]
    with pytest.raises(CampaignExists, match="reminders"):
        await store.create_campaign(Spec(), people(1, first=50), now=T0)
    assert await store.get_campaign("nope") is None
    with pytest.raises(ValueError, match="no number to call from"):
        await store.create_campaign(Spec(name="silent", from_numbers=()), people(1), now=T0)
    assert [r["phone"] for r in await store.export_rows(campaign_id)] == [c.phone for c in people(3)]


@pytest.mark.parametrize("path, allowed", [
    (["running", "paused", "running", "done"], True),
    (["canceled"], True),
    (["running", "paused", "canceled"], True),
    (["paused"], False),
    (["done"], False),
    (["running", "done", "running"], False),
    (["canceled", "running"], False),
    (["running", "running"], False),
])
async def test_state_transitions(sqlite_url, path, allowed):
    store = await Store.open(sqlite_url)
    try:
        await store.create_campaign(Spec(), people(1), now=T0)
        *before, last = path
        for i, state in enumerate(before):
            await store.set_campaign_state("reminders", state, now=T0 + timedelta(minutes=i))
        if not allowed:
            was = (await store.get_campaign("reminders")).state
            with pytest.raises(InvalidTransition, match=f"is {was}: it cannot become {last}"):
                await store.set_campaign_state("reminders", last, now=T0 + HOUR)
            assert (await store.get_campaign("reminders")).state == was
            return
        row = await store.set_campaign_state("reminders", last, now=T0 + HOUR)
        assert row == await store.get_campaign("reminders")
        assert row.state == last
        assert row.started_at == (T0 if path[0] == "running" else None)     # the first start, kept
        assert row.ended_at == (T0 + HOUR if last in ("done", "canceled") else None)
    finally:
        await store.close()


async def test_running_campaigns_and_an_unknown_name(store):
    await store.create_campaign(Spec(name="a"), people(1), now=T0)
    await store.create_campaign(Spec(name="b"), people(1), now=T0 + HOUR)
    await store.set_campaign_state("b", "running", now=T0)
    assert [c.name for c in await store.running_campaigns()] == ["b"]
    with pytest.raises(UnknownCampaign, match="'c'"):
        await store.set_campaign_state("c", "running", now=T0)


# -- claims ----------------------------------------------------------------------------------------------------

async def test_a_claim_takes_due_contacts_in_order_with_rate_slots_and_rotated_caller_ids(store):
    spec = Spec(max_concurrent_calls=50, calls_per_second=4.0)
    campaign_id = await store.create_campaign(spec, people(10), now=T0)
    assert await claim(store, campaign_id) == []            # not started yet
    await store.set_campaign_state("reminders", "running", now=T0)
    first = await claim(store, campaign_id, horizon_s=1.0)
    # Slots T0, +0.25, +0.5, +0.75, +1.0: those within the horizon.
    assert [c.dial_at - T0.timestamp() for c in first] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    assert [c.phone for c in first] == [c.phone for c in people(5)]
    assert [c.from_number for c in first] == [spec.from_numbers[i % 3] for i in range(5)]
    assert {c.number for c in first} == {1}
    assert first[0].variables == {"first_name": "Name0", "ref": "R0"} and first[0].timezone == "America/New_York"
    # Half a second later the schedule goes on where it stopped, and so does the caller id rotation.
    second = await claim(store, campaign_id, now=T0 + timedelta(seconds=0.5), horizon_s=1.0)
    assert [c.dial_at - T0.timestamp() for c in second] == pytest.approx([1.25, 1.5])
    assert [c.from_number for c in second] == [spec.from_numbers[2], spec.from_numbers[0]]
    # A limit smaller than the free slots, and a schedule that fell behind: it starts again at now.
    later = T0 + timedelta(seconds=30)
    third = await claim(store, campaign_id, now=later, limit=2)
    assert [c.dial_at - later.timestamp() for c in third] == pytest.approx([0, 0.25])
    contact = await contact_of(store, first[0])
    assert (contact.state, contact.attempts, contact.next_due_at) == ("in_flight", 1, None)
    attempt = await store.attempt(first[0].attempt_id)
    assert (attempt.state, attempt.number, attempt.phone, attempt.carrier, attempt.claimed_at) == (
        "claimed", 1, first[0].phone, "twilio", T0)


async def test_claims_never_exceed_the_concurrent_calls_and_free_slots_as_attempts_end(store):
    spec = Spec(max_concurrent_calls=3)
    campaign_id = await running(store, spec, people(8))
    claimed = await claim(store, campaign_id)
    assert len(claimed) == 3
    assert await claim(store, campaign_id, now=T0 + timedelta(seconds=5)) == []
    await dial(store, claimed[0])
    await finish(store, spec, claimed[0], "answered")
    await store.release_claim(claimed[1].attempt_id)
    more = await claim(store, campaign_id, now=T0 + timedelta(seconds=6))
    assert [c.phone for c in more] == [claimed[1].phone, people(8)[3].phone]    # the released contact first
    assert more[0].number == 1      # a released claim was never dialed: it does not count as an attempt


async def test_paused_and_canceled_campaigns_claim_nothing(store):
    campaign_id = await running(store, Spec(), people(3))
    await store.set_campaign_state("reminders", "paused", now=T0)
    assert await claim(store, campaign_id) == []
    await store.set_campaign_state("reminders", "canceled", now=T0)
    assert await claim(store, campaign_id) == []


async def test_do_not_call_contacts_are_never_claimed_and_become_dnc(store):
    contacts = people(4)
    campaign_id = await running(store, Spec(), contacts)
    assert await store.dnc_add(contacts[1].phone, source="cli", note="asked by letter", now=T0)
    claimed = await claim(store, campaign_id)
    assert [c.phone for c in claimed] == [contacts[0].phone, contacts[2].phone, contacts[3].phone]
    rows = {r["phone"]: r for r in await store.export_rows(campaign_id)}
    assert (rows[contacts[1].phone]["outcome"], rows[contacts[1].phone]["attempts"]) == ("dnc", 0)
    assert await claim(store, campaign_id, now=T0 + HOUR) == []


async def test_a_number_live_in_another_campaign_waits_until_that_call_ends(store):
    shared = people(1)[0]
    spec_a, spec_b = Spec(name="a"), Spec(name="b")
    a = await running(store, spec_a, [shared])
    b = await running(store, spec_b, [shared, *people(1, first=100)])
    (in_a,) = await claim(store, a)
    assert [c.phone for c in await claim(store, b)] == [people(1, first=100)[0].phone]
    assert await claim(store, b, now=T0 + timedelta(seconds=10)) == []
    await dial(store, in_a)
    await finish(store, spec_a, in_a, "answered", now=T0 + timedelta(seconds=20))
    (in_b,) = await claim(store, b, now=T0 + timedelta(seconds=30))
    assert in_b.phone == shared.phone


async def test_the_window_moves_a_contact_and_a_campaign_over_leaves_it_undialed(store):
    contacts = [Contact(2, "+15551230000", "Asia/Tokyo"), Contact(3, "+15551230001", "Europe/Paris"),
                Contact(4, "+15551230002", "America/Chicago")]
    campaign_id = await running(store, Spec(), contacts)
    tokyo_opens = T0 + timedelta(hours=9)
    seen = []

    def window(tz: str, at: datetime) -> datetime | None:
        seen.append(tz)
        return {"Asia/Tokyo": tokyo_opens, "Europe/Paris": None}.get(tz, at)

    claimed = await claim(store, campaign_id, due=window)
    assert [c.timezone for c in claimed] == ["America/Chicago"]
    assert sorted(seen) == ["America/Chicago", "Asia/Tokyo", "Europe/Paris"]
    status = await store.campaign_status(campaign_id, now=T0)
    assert (status["pending"], status["done"], status["in_flight"], status["next_due_at"]) == (1, 1, 1, tokyo_opens)
    assert await claim(store, campaign_id, now=tokyo_opens - timedelta(seconds=1), due=window) == []
    (tokyo,) = await claim(store, campaign_id, now=tokyo_opens, due=window)
    assert tokyo.phone == "+15551230000"
    rows = {r["phone"]: r for r in await store.export_rows(campaign_id)}
    assert (rows["+15551230001"]["outcome"], rows["+15551230001"]["attempts"]) == ("pending", 0)


# -- an attempt's progress and end -----------------------------------------------------------------------------

async def test_status_callbacks_apply_in_order_only(store):
    campaign_id = await running(store, Spec(), people(1))
    (claimed,) = await claim(store, campaign_id)
    attempt_id = claimed.attempt_id
    assert await store.mark_dialing(attempt_id, now=T0)
    # The carrier's first callback can beat the answer to the dial request.
    ringing = await store.attempt_progress(attempt_id, carrier_call_id="CA1", status="ringing", now=T0, sequence=1)
    assert (ringing.state, ringing.carrier_call_id, ringing.last_sequence) == ("ringing", "CA1", 1)
    assert await store.mark_dialed(attempt_id, "CA1", now=T0)
    assert (await store.attempt(attempt_id)).state == "ringing"          # not moved back to dialed
    answered_at = T0 + timedelta(seconds=4)
    answered = await store.attempt_progress(attempt_id, carrier_call_id="CA1", status="answered", now=answered_at,
                                            sequence=3, answered_by="human")
    assert (answered.state, answered.answered_at, answered.answered_by) == ("answered", answered_at, "human")
    late = T0 + timedelta(seconds=5)
    assert await store.attempt_progress(attempt_id, carrier_call_id="CA1", status="ringing", now=late,
                                        sequence=2) is None                      # older sequence
    assert await store.attempt_progress(attempt_id, carrier_call_id="CA1", status="answered", now=late,
                                        sequence=3) is None                      # replayed
    assert await store.attempt_progress(attempt_id, carrier_call_id="CA1", status="ringing", now=late) is None
    assert await store.attempt_progress(attempt_id, carrier_call_id="CA2", status="completed", now=late,
                                        sequence=9) is None                      # another call's callback
    assert not await store.mark_dialed(attempt_id, "CA2", now=late)
    assert await store.attempt(attempt_id) == answered
    completed = await store.attempt_progress(attempt_id, carrier_call_id="CA1", status="completed", now=late,
                                             sequence=4, duration_s=61.5, detail="normal clearing")
    assert (completed.state, completed.duration_s, completed.detail) == ("answered", 61.5, "normal clearing")
    await finish(store, Spec(), claimed, "answered", now=late)
    assert await store.attempt_progress(attempt_id, carrier_call_id="CA1", status="completed", now=late,
                                        sequence=5) is None                      # after the end
    with pytest.raises(ValueError, match="status must be one of"):
        await store.attempt_progress(attempt_id, carrier_call_id="CA1", status="in-progress", now=late)


async def test_the_answering_machine_verdict_is_kept_whenever_it_comes(store):
    campaign_id = await running(store, Spec(), people(1))
    (claimed,) = await claim(store, campaign_id)
    await dial(store, claimed)
    amd = await store.set_answered_by(claimed.attempt_id, "machine_end_beep", now=T0 + timedelta(seconds=9))
    assert (amd.state, amd.answered_by, amd.answered_at) == ("answered", "machine_end_beep", T0 + timedelta(seconds=9))
    assert await store.attempt(claimed.attempt_id) == amd


async def test_a_final_status_ends_the_attempt_in_the_same_transaction_once(store):
    spec = Spec()
    campaign_id = await running(store, spec, people(2))
    busy, machine = await claim(store, campaign_id)
    for claimed in (busy, machine):
        await dial(store, claimed)
    await store.set_answered_by(machine.attempt_id, "machine_end_beep", now=T0)
    verdicts = []

    def outcome_of(status: str, answered_by: str | None) -> tuple[str, str | None]:
        verdicts.append((status, answered_by))
        return ("voicemail", None) if answered_by else (status, None)

    later = T0 + timedelta(seconds=30)
    ended = await store.final_progress(busy.attempt_id, carrier_call_id=f"CA{busy.attempt_id}", status="busy",
                                       now=later, sequence=3, duration_s=0.0, detail="line busy",
                                       outcome_of=outcome_of, retry_after=spec.retry_after, due=always)
    assert (ended.state, ended.outcome, ended.detail, ended.ended_at) == ("ended", "busy", "line busy", later)
    contact = await contact_of(store, busy)
    assert (contact.state, contact.last_outcome, contact.next_due_at) == (
        "pending", "busy", later + timedelta(minutes=20))
    voicemail = await store.final_progress(machine.attempt_id, carrier_call_id=None, status="completed", now=later,
                                           duration_s=21.5, outcome_of=outcome_of, retry_after=spec.retry_after,
                                           due=always)
    assert (voicemail.outcome, voicemail.duration_s) == ("voicemail", 21.5)
    assert verdicts == [("busy", None), ("completed", "machine_end_beep")]
    # Repeated (same sequence) or late: nothing changes, and the outcome is not asked again.
    assert await store.final_progress(busy.attempt_id, carrier_call_id=None, status="busy", now=later, sequence=3,
                                      outcome_of=outcome_of, retry_after=spec.retry_after, due=always) is None
    assert await store.final_progress(machine.attempt_id, carrier_call_id=None, status="no-answer", now=later,
                                      outcome_of=outcome_of, retry_after=spec.retry_after, due=always) is None
    assert len(verdicts) == 2
    with pytest.raises(ValueError, match="final status"):
        await store.final_progress(busy.attempt_id, carrier_call_id=None, status="ringing", now=later,
                                   outcome_of=outcome_of, retry_after=spec.retry_after, due=always)


async def test_retries_follow_the_policy_by_outcome_then_the_contact_is_done(store):
    spec = Spec()       # no-answer: 2 retries after 1 h; busy: 1 after 20 min
    campaign_id = await running(store, spec, people(1))
    calls = []

    def retry_after(outcome: str, earlier: int) -> timedelta | None:
        calls.append((outcome, earlier))
        return spec.retry_after(outcome, earlier)

    now = T0
    for outcome in ("no-answer", "busy", "no-answer", "no-answer"):
        (claimed,) = await claim(store, campaign_id, now=now)
        await dial(store, claimed, now=now)
        ended = await store.finish_attempt(claimed.attempt_id, outcome=outcome, now=now, detail="carrier said so",
                                           retry_after=retry_after, due=always)
        assert (ended.state, ended.outcome, ended.ended_at, ended.detail) == ("ended", outcome, now,
                                                                               "carrier said so")
        contact = await contact_of(store, claimed)
        now = contact.next_due_at or now
    assert calls == [("no-answer", 0), ("busy", 0), ("no-answer", 1), ("no-answer", 2)]
    assert (contact.state, contact.attempts, contact.last_outcome, contact.next_due_at) == (
        "done", 4, "no-answer", None)
    assert now == T0 + 2 * HOUR + timedelta(minutes=20)
    assert await claim(store, campaign_id, now=now + 10 * HOUR) == []
    assert await finish(store, spec, claimed, "answered", now=now) is None      # ended already: unchanged
    assert (await contact_of(store, claimed)).last_outcome == "no-answer"


async def test_a_retry_waits_for_the_window_and_answered_or_canceled_contacts_are_not_retried(store):
    spec = Spec()
    campaign_id = await running(store, spec, people(3))
    a, b, c = await claim(store, campaign_id)
    opening = T0 + timedelta(hours=16)
    await finish(store, spec, a, "no-answer", due=lambda tz, at: opening)
    assert ((await contact_of(store, a)).state, (await contact_of(store, a)).next_due_at) == ("pending", opening)
    await finish(store, spec, b, "answered")
    assert (await contact_of(store, b)).state == "done"
    await store.set_campaign_state("reminders", "canceled", now=T0)
    await finish(store, spec, c, "busy")
    assert ((await contact_of(store, c)).state, (await contact_of(store, c)).last_outcome) == ("done", "busy")


async def test_an_opt_out_reported_before_the_end_makes_the_contact_dnc(store):
    spec = Spec()
    campaign_id = await running(store, spec, people(2))
    claimed, other = await claim(store, campaign_id)
    await dial(store, claimed)
    await store.call_result(claimed.attempt_id, call_id="c0ffee0000000001", opted_out=True, now=T0)
    assert await store.dnc_contains(claimed.phone)
    assert [(e.phone, e.source) for e in await store.dnc_list()] == [(claimed.phone, "opt_out")]
    await finish(store, spec, claimed, "answered")
    contact = await contact_of(store, claimed)
    assert (contact.state, contact.last_outcome) == ("dnc", "dnc")
    # A number put on the list during another contact's call: that contact is not retried either.
    await store.dnc_add(other.phone, source="api", now=T0)
    await finish(store, spec, other, "no-answer")
    assert (await contact_of(store, other)).state == "dnc"
    assert [r["outcome"] for r in await store.export_rows(campaign_id)] == ["dnc", "dnc"]


async def test_the_calls_result_after_the_end_still_lands(store):
    spec = Spec()
    campaign_id = await running(store, spec, people(2))
    a, b = await claim(store, campaign_id)
    for claimed in (a, b):
        await dial(store, claimed)
        await finish(store, spec, claimed, "answered")
    await store.call_result(a.attempt_id, call_id="c0ffee0000000001", disposition="confirmed", note="Tuesday 3pm")
    await store.call_result(b.attempt_id, call_id="c0ffee0000000002", opted_out=True)
    attempt = await store.attempt(a.attempt_id)
    assert (attempt.call_id, attempt.disposition, attempt.note, attempt.opted_out) == (
        "c0ffee0000000001", "confirmed", "Tuesday 3pm", False)
    rows = await store.export_rows(campaign_id)
    assert [(r["outcome"], r["note"], r["call_ids"]) for r in rows] == [
        ("confirmed", "Tuesday 3pm", "c0ffee0000000001"), ("dnc", "", "c0ffee0000000002")]
    assert await store.dnc_contains(b.phone)
    assert await store.call_result("0" * 16, call_id="x") is None


async def test_release_claim_only_undoes_a_claim_never_sent(store):
    campaign_id = await running(store, Spec(), people(2))
    a, b = await claim(store, campaign_id)
    await store.mark_dialing(b.attempt_id, now=T0)
    assert await store.release_claim(a.attempt_id)
    assert not await store.release_claim(b.attempt_id)      # the request may have gone out: reconcile it instead
    assert await store.attempt(a.attempt_id) is None
    assert (await store.attempt(b.attempt_id)).state == "dialing"
    (again,) = await claim(store, campaign_id, now=T0 + timedelta(seconds=1))
    assert (again.phone, again.number) == (a.phone, 1)


async def test_stale_attempts_are_found_by_how_long_each_state_lasted(store):
    campaign_id = await running(store, Spec(), people(5))
    claimed, dialing, dialed, answered, fresh = await claim(store, campaign_id)
    await store.mark_dialing(dialing.attempt_id, now=T0)
    await dial(store, dialed, now=T0)
    await dial(store, answered, now=T0)
    await store.attempt_progress(answered.attempt_id, carrier_call_id=None, status="answered",
                                 now=T0 + timedelta(seconds=50))
    await dial(store, fresh, now=T0 + timedelta(seconds=55))
    stale = await store.stale_attempts(now=T0 + timedelta(seconds=60), claimed_older_s=30, dialing_older_s=30,
                                       dialed_older_s=30)
    assert {a.id for a in stale} == {claimed.attempt_id, dialing.attempt_id, dialed.attempt_id}


async def test_outbound_context_gives_the_attempt_its_contact_and_campaign(store):
    contacts = people(1)
    campaign_id = await running(store, Spec(), contacts)
    (claimed,) = await claim(store, campaign_id)
    attempt, contact, campaign = await store.outbound_context(claimed.attempt_id)
    assert (attempt.id, contact.id, campaign.id) == (claimed.attempt_id, claimed.contact_id, campaign_id)
    assert (contact.row, contact.variables, campaign.definition) == (2, contacts[0].variables, Spec().to_json())
    assert await store.outbound_context("0" * 16) is None


# -- what a campaign did ---------------------------------------------------------------------------------------

async def test_status_and_export_show_every_contact(store):
    spec = Spec(max_concurrent_calls=5)
    contacts = [Contact(row=i + 2, phone=f"+1555123000{i}", variables={"first_name": n, "plan": p})
                for i, (n, p) in enumerate([("Ann", "gold"), ("Bo", "basic"), ("Cy", "gold"), ("Di", "basic"),
                                            ("Ed", "gold"), ("Flo", "basic")])]
    campaign_id = await running(store, spec, contacts)
    await store.dnc_add(contacts[2].phone, source="import", now=T0)
    ann, bo, di, ed, flo = await claim(store, campaign_id)
    now = T0 + timedelta(seconds=30)
    for claimed in (ann, bo, di, ed):
        await dial(store, claimed, now=T0)
    await store.call_result(ann.attempt_id, call_id="aaaa000000000001", disposition="confirmed", note="ok")
    await finish(store, spec, ann, "answered", now=now)
    await finish(store, spec, bo, "answered", now=now)
    await finish(store, spec, di, "voicemail", now=now)      # no voicemail retries: done
    await finish(store, spec, ed, "no-answer", now=now)      # retried in an hour
    status = await store.campaign_status(campaign_id, now=now)
    assert status == {
        "contacts": 6, "pending": 1, "in_flight": 1, "done": 3, "dnc": 1, "skipped": 0,
        "outcomes": {"confirmed": 1, "answered": 1, "voicemail": 1, "no-answer": 1, "dnc": 1},
        "attempts": 5, "dials_last_60s": 4, "rate_per_s": 4 / 60, "next_due_at": now + HOUR,
        "pending_due_by_zone": {ed.timezone: now + HOUR},
    }
    rows = await store.export_rows(campaign_id)
    assert list(rows[0]) == ["phone", "outcome", "attempts", "note", "call_ids", "first_name", "plan"]
    assert [(r["phone"], r["outcome"], r["attempts"], r["note"], r["call_ids"], r["first_name"]) for r in rows] == [
        ("+15551230000", "confirmed", 1, "ok", "aaaa000000000001", "Ann"),
        ("+15551230001", "answered", 1, "", "", "Bo"),
        ("+15551230002", "dnc", 0, "", "", "Cy"),
        ("+15551230003", "voicemail", 1, "", "", "Di"),
        ("+15551230004", "no-answer", 1, "", "", "Ed"),
        ("+15551230005", "pending", 1, "", "", "Flo"),      # claimed, not finished: no outcome yet
    ]


async def test_the_do_not_call_list(store):
    assert await store.dnc_add("+15551230000", source="cli", note="by phone", now=T0)
    assert not await store.dnc_add("+15551230000", source="api", now=T0 + HOUR)     # kept as first added
    await store.dnc_add("+15551230001", source="import", now=T0 + HOUR)
    entries = await store.dnc_list()
    assert [(e.phone, e.source, e.note, e.added_at) for e in entries] == [
        ("+15551230000", "cli", "by phone", T0), ("+15551230001", "import", None, T0 + HOUR)]
    assert await store.dnc_remove("+15551230000")
    assert not await store.dnc_remove("+15551230000")
    assert not await store.dnc_contains("+15551230000") and await store.dnc_contains("+15551230001")
    with pytest.raises(ValueError, match="source must be one of"):
        await store.dnc_add("+15551230002", source="web", now=T0)


# -- claimers side by side -------------------------------------------------------------------------------------

def assert_paced(dial_ats: list[float], cps: float) -> None:
    ordered = sorted(dial_ats)
    gaps = [b - a for a, b in zip(ordered, ordered[1:])]
    assert min(gaps) >= 1 / cps - 1e-6, f"two dial slots {min(gaps):.6f} s apart at {cps}/s"


def now() -> datetime:
    return datetime.now(timezone.utc)


async def test_claimers_on_several_connections_hold_the_limits_and_never_share_a_contact(database_url):
    spec = Spec(max_concurrent_calls=12, calls_per_second=500.0)
    stores = [await Store.open(database_url) for _ in range(4)]
    try:
        campaign_id = await running(stores[0], spec, people(60), now=now())
        # Everyone at once, nothing ending: together they fill the concurrency exactly, no more.
        rounds = await asyncio.gather(*(s.claim(campaign_id, now=now(), horizon_s=0.01, limit=5, due=always)
                                        for s in stores for _ in range(3)))
        first = [c for r in rounds for c in r]
        assert len(first) == len({c.contact_id for c in first}) <= 12
        # Then calls end while others claim, until every contact has been called once.
        claimed: list[Claim] = []

        async def dialer(store: Store, seed: int) -> None:
            backlog = list(first[seed::len(stores)])
            while True:
                fresh = await store.claim(campaign_id, now=now(), horizon_s=0.01, limit=4, due=always)
                claimed.extend(fresh)
                backlog.extend(fresh)
                if not backlog:
                    status = await store.campaign_status(campaign_id)
                    if status["pending"] == status["in_flight"] == 0:
                        return
                    await asyncio.sleep(0.001)      # another dialer's calls hold the slots: look again
                    continue
                done = backlog.pop(0)
                await store.mark_dialing(done.attempt_id, now=now())
                await store.mark_dialed(done.attempt_id, f"CA{done.attempt_id}", now=now())
                await store.finish_attempt(done.attempt_id, outcome="answered", now=now(),
                                           retry_after=spec.retry_after, due=always)

        await asyncio.wait_for(asyncio.gather(*(dialer(s, i) for i, s in enumerate(stores))), 60)
        everyone = first + claimed
        assert sorted(c.phone for c in everyone) == sorted(c.phone for c in people(60))   # each once
        assert_paced([c.dial_at for c in everyone], spec.calls_per_second)
        status = await stores[0].campaign_status(campaign_id)
        assert (status["done"], status["attempts"], status["outcomes"]) == (60, 60, {"answered": 60})
    finally:
        for s in stores:
            await s.close()


CLAIMER = """
import asyncio, json, sys
from datetime import datetime, timezone
import structlog
from voicebot.store import Store

structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))   # stdout carries the claims

async def main(url, campaign_id, horizon_s):
    store = await Store.open(url, migrate=False)
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        while True:
            claims = await store.claim(campaign_id, now=datetime.now(timezone.utc), horizon_s=horizon_s, limit=3,
                                       due=lambda tz, at: at)
            for c in claims:
                print(json.dumps([c.contact_id, c.dial_at]), flush=True)
            if not claims:
                status = await store.campaign_status(campaign_id)
                row = await store.get_campaign(campaign_id)
                if status["pending"] == 0 or status["in_flight"] >= row.max_concurrent_calls:
                    return
    finally:
        await store.close()

asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
"""


async def test_claimers_in_separate_processes_hold_the_limits_and_never_share_a_contact(database_url):
    spec = Spec(max_concurrent_calls=40, calls_per_second=400.0)
    store = await Store.open(database_url)
    try:
        campaign_id = await running(store, spec, people(100), now=now())
        procs = [await asyncio.create_subprocess_exec(sys.executable, "-c", CLAIMER, database_url, campaign_id,
                                                      "0.01", stdin=asyncio.subprocess.PIPE,
                                                      stdout=asyncio.subprocess.PIPE)
                 for _ in range(3)]
        for proc in procs:
            assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"ready\n"
        for proc in procs:      # all at once
            proc.stdin.write(b"go\n")
        outputs = await asyncio.wait_for(asyncio.gather(*(proc.communicate() for proc in procs)), 60)
        assert [proc.returncode for proc in procs] == [0, 0, 0]
        claims = [json.loads(line) for out, _ in outputs for line in out.decode().splitlines()]
        per_process = [len(out.splitlines()) for out, _ in outputs]
        assert len(claims) == 40, per_process                               # exactly the limit
        assert len({contact for contact, _ in claims}) == 40                # none twice
        assert_paced([dial_at for _, dial_at in claims], spec.calls_per_second)
        status = await store.campaign_status(campaign_id)
        assert (status["in_flight"], status["pending"], status["attempts"]) == (40, 60, 40)
    finally:
        await store.close()


async def test_campaigns_sharing_numbers_claimed_side_by_side_never_ring_one_number_twice(database_url):
    shared = people(20)
    stores = [await Store.open(database_url) for _ in range(4)]
    try:
        ids = [await running(stores[0], Spec(name=name, max_concurrent_calls=50), shared, now=now())
               for name in ("a", "b")]
        rounds = await asyncio.gather(*(store.claim(ids[i % 2], now=now(), horizon_s=1.0, limit=10, due=always)
                                        for i, store in enumerate(stores) for _ in range(3)))
        phones = [c.phone for r in rounds for c in r]
        assert sorted(phones) == sorted(c.phone for c in shared)    # each number once, whichever campaign won it
        statuses = [await stores[0].campaign_status(i) for i in ids]
        assert sum(s["in_flight"] for s in statuses) == 20 and sum(s["pending"] for s in statuses) == 20
    finally:
        for s in stores:
            await s.close()


async def test_a_claim_reads_the_first_due_contacts_off_the_index_without_sorting_them_all(sqlite_url):
    """At a large campaign's start every contact is due at once: a claim must not sort all of them to take a few."""
    import sqlalchemy as sa
    from voicebot.store import campaigns as store_campaigns

    store = await Store.open(sqlite_url)
    campaign_id = await running(store, Spec(), people(300))
    await store.close()
    engine = sa.create_engine(sqlite_url)
    seen: list[tuple[str, tuple]] = []

    def remember(_conn, _cursor, statement, parameters, _context, _executemany):
        if statement.lstrip().upper().startswith("SELECT") and "FROM contacts" in statement:
            seen.append((statement, parameters))
    sa.event.listen(engine, "before_cursor_execute", remember)
    try:
        with engine.begin() as conn:
            due = store_campaigns._due_contacts(conn, campaign_id, T0, [], 64)
            assert [row["phone"] for row in due] == [c.phone for c in people(64)]
            ((statement, parameters),) = seen
            plan = " | ".join(row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters))
    finally:
        engine.dispose()
    assert "ix_contacts_campaign_state_due_row" in plan and "TEMP B-TREE" not in plan, plan
