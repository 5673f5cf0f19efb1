"""Outbound campaigns in the database: campaigns, their contacts, dial attempts and the do-not-call list, and the
one query that matters most, ``claim``: which contacts to dial next, within the campaign's limits, shared by every
process and instance that dials it.

Every function takes a (synchronous) connection inside a transaction and is one transaction's work; the ones
that write expect a *write* transaction (on SQLite one begun with BEGIN IMMEDIATE), so that a read followed by
a write in it never races another writer. ``database.Store`` runs them: on PostgreSQL on the asyncio driver,
on SQLite whole in a worker thread (one hand-over per transaction instead of several per statement)."""

from __future__ import annotations

import dataclasses
import math
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog

from .schema import LIVE_PREDICATE, LIVE_STATES, attempts, campaigns, contacts, dnc, server_keys

log = structlog.get_logger("voicebot.store.campaigns")

CAMPAIGN_STATES = ("created", "running", "paused", "canceled", "done")
CONTACT_STATES = ("pending", "in_flight", "done", "dnc", "skipped")
ATTEMPT_STATES = (*LIVE_STATES, "ended")
ATTEMPT_OUTCOMES = ("answered", "voicemail", "no-answer", "busy", "failed", "canceled", "dnc")
# What a carrier's status callback may say, carrier-neutral; the last five end the call.
CARRIER_STATUSES = ("ringing", "answered", "completed", "busy", "no-answer", "failed", "canceled")
FINAL_STATUSES = CARRIER_STATUSES[2:]
DNC_SOURCES = ("cli", "api", "opt_out", "import")
TRANSITIONS = {
    ("created", "running"), ("running", "paused"), ("paused", "running"), ("running", "done"),
    ("created", "canceled"), ("running", "canceled"), ("paused", "canceled"),
}
# An attempt's progress, in the order a call goes through it: a callback never moves an attempt backwards.
_STATE_ORDER = {state: rank for rank, state in enumerate(ATTEMPT_STATES)}
_CANDIDATE_BATCH = 64        # contacts looked at per query while claiming (most claims need one query)

Due = Callable[[str, datetime], "datetime | None"]
RetryAfter = Callable[[str, int], "timedelta | None"]


class CampaignExists(ValueError):
    """A campaign of that name exists already."""


class UnknownCampaign(LookupError):
    """No campaign has that name or id."""


class InvalidTransition(ValueError):
    """The campaign cannot go from its state to the one asked (e.g. resume a canceled campaign)."""


def _new_id() -> str:
    return secrets.token_hex(8)


class _Row:
    @classmethod
    def from_row(cls, row: Mapping[str, Any]):
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class CampaignRow(_Row):
    id: str
    name: str
    state: str
    definition: dict                  # CampaignSpec.to_json()
    carrier: str
    from_numbers: list[str]
    max_concurrent_calls: int
    calls_per_second: float
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    next_slot_at: float
    from_index: int


@dataclass(frozen=True)
class ContactRow(_Row):
    id: str
    campaign_id: str
    row: int
    phone: str
    timezone: str
    variables: dict
    state: str
    attempts: int
    next_due_at: datetime | None
    last_outcome: str | None
    disposition: str | None
    note: str | None
    updated_at: datetime


@dataclass(frozen=True)
class AttemptRow(_Row):
    id: str
    campaign_id: str
    contact_id: str
    number: int
    phone: str
    from_number: str
    carrier: str
    state: str
    dial_at: float
    claimed_at: datetime
    dialing_at: datetime | None
    answered_at: datetime | None
    ended_at: datetime | None
    carrier_call_id: str | None
    answered_by: str | None
    outcome: str | None
    detail: str | None
    duration_s: float | None
    call_id: str | None
    disposition: str | None
    note: str | None
    opted_out: bool
    last_sequence: int | None


@dataclass(frozen=True)
class DncEntry(_Row):
    phone: str
    added_at: datetime
    source: str
    note: str | None


@dataclass(frozen=True)
class Claim:
    """A contact to dial: the attempt is recorded (state claimed) before anything is sent to the carrier."""

    attempt_id: str
    campaign_id: str
    contact_id: str
    phone: str
    timezone: str
    variables: dict
    number: int               # 1 = the contact's first dial
    from_number: str
    dial_at: float            # epoch seconds: send the dial request at this moment, not before


# -- campaigns -------------------------------------------------------------------------------------------------

def create_campaign(conn: sa.Connection, spec, contact_list, *, now: datetime) -> str:
    """The campaign (state created) and its contacts, all pending and due now (the window decides when they are
    dialed). ``spec`` is a CampaignSpec, ``contact_list`` Contacts (row, phone, timezone, variables)."""
    if not spec.from_numbers:
        raise ValueError(f"campaign {spec.name!r}: no number to call from (from_numbers is empty)")
    if _campaign_by(conn, campaigns.c.name == spec.name) is not None:
        raise CampaignExists(f"a campaign named {spec.name!r} exists already")
    campaign_id = _new_id()
    conn.execute(campaigns.insert().values(
        id=campaign_id, name=spec.name, state="created", definition=spec.to_json(), carrier=spec.carrier,
        from_numbers=list(spec.from_numbers), max_concurrent_calls=spec.max_concurrent_calls,
        calls_per_second=float(spec.calls_per_second), created_at=now, next_slot_at=0.0, from_index=0))
    rows = [dict(id=_new_id(), campaign_id=campaign_id, row=c.row, phone=c.phone, timezone=c.timezone,
                 variables=dict(c.variables), state="pending", attempts=0, next_due_at=now, updated_at=now)
            for c in contact_list]
    if rows:
        conn.execute(contacts.insert(), rows)
    return campaign_id


def _campaign_by(conn: sa.Connection, where, *, lock: bool = False) -> CampaignRow | None:
    query = sa.select(campaigns).where(where)
    if lock:
        query = query.with_for_update()
    row = conn.execute(query).mappings().first()
    return None if row is None else CampaignRow.from_row(row)


def get_campaign(conn: sa.Connection, name_or_id: str) -> CampaignRow | None:
    return _campaign_by(conn, sa.or_(campaigns.c.name == name_or_id, campaigns.c.id == name_or_id))


def list_campaigns(conn: sa.Connection, *, state: str | None = None) -> list[CampaignRow]:
    query = sa.select(campaigns).order_by(campaigns.c.created_at, campaigns.c.name)
    if state is not None:
        query = query.where(campaigns.c.state == state)
    return [CampaignRow.from_row(row) for row in conn.execute(query).mappings()]


def set_campaign_state(conn: sa.Connection, name_or_id: str, state: str, *, now: datetime) -> CampaignRow:
    where = sa.or_(campaigns.c.name == name_or_id, campaigns.c.id == name_or_id)
    campaign = _campaign_by(conn, where, lock=True)
    if campaign is None:
        raise UnknownCampaign(f"no campaign named {name_or_id!r}")
    if (campaign.state, state) not in TRANSITIONS:
        raise InvalidTransition(f"campaign {campaign.name!r} is {campaign.state}: it cannot become {state}")
    values: dict[str, Any] = {"state": state}
    if state == "running" and campaign.started_at is None:
        values["started_at"] = now
    if state in ("canceled", "done"):
        values["ended_at"] = now
    conn.execute(campaigns.update().where(campaigns.c.id == campaign.id).values(**values))
    return dataclasses.replace(campaign, **values)


# -- claiming contacts to dial ---------------------------------------------------------------------------------

def _slots(base: float, now_s: float, horizon_s: float, cps: float) -> int:
    """How many dial slots base, base + 1/cps, … fall at or before now + horizon."""
    if base > now_s + horizon_s:
        return 0
    return int(math.floor((now_s + horizon_s - base) * cps + 1e-9)) + 1


def claim(conn: sa.Connection, campaign_id: str, *, now: datetime, horizon_s: float, limit: int,
          due: Due) -> list[Claim]:
    """Claim up to ``limit`` contacts of a running campaign to dial, each with its rate slot. The campaign row is
    held for the whole transaction (PostgreSQL: FOR UPDATE; SQLite: the write transaction), so that two claimers
    of one campaign, in any process, see each other's attempts and slots."""
    campaign = _campaign_by(conn, campaigns.c.id == campaign_id, lock=True)
    if campaign is None or campaign.state != "running" or limit <= 0:
        return []
    live = conn.execute(sa.select(sa.func.count()).select_from(attempts).where(
        attempts.c.campaign_id == campaign_id, attempts.c.state.in_(LIVE_STATES))).scalar_one()
    now_s = now.timestamp()
    cps = campaign.calls_per_second
    base = max(now_s, campaign.next_slot_at)
    wanted = min(limit, campaign.max_concurrent_calls - live, _slots(base, now_s, horizon_s, cps))
    claimed: list[Claim] = []
    passed: list[str] = []     # contacts whose number turned out live elsewhere: left pending, not looked at again
    while len(claimed) < wanted:
        batch = max(wanted - len(claimed), _CANDIDATE_BATCH)
        candidates = _due_contacts(conn, campaign_id, now, passed, batch)
        chosen: list[Claim] = []
        for contact in candidates:
            if len(claimed) + len(chosen) == wanted:
                break
            if contact["on_dnc"]:
                _set_contact(conn, contact["id"], now, state="dnc", last_outcome="dnc", next_due_at=None)
                continue
            due_at = due(contact["timezone"], now)
            if due_at is None:          # the campaign's dialing period is over for this contact
                _set_contact(conn, contact["id"], now, state="done", next_due_at=None)
                continue
            if due_at > now:
                _set_contact(conn, contact["id"], now, next_due_at=due_at)
                continue
            slot = len(claimed) + len(chosen)
            chosen.append(Claim(
                attempt_id=_new_id(), campaign_id=campaign_id, contact_id=contact["id"], phone=contact["phone"],
                timezone=contact["timezone"], variables=contact["variables"], number=contact["attempts"] + 1,
                from_number=campaign.from_numbers[(campaign.from_index + slot) % len(campaign.from_numbers)],
                dial_at=base + slot / cps))
        inserted = _insert_attempts(conn, chosen, carrier=campaign.carrier, now=now)
        passed.extend(c.contact_id for c in chosen if c.attempt_id not in inserted)
        chosen = [c for c in chosen if c.attempt_id in inserted]
        if chosen:
            conn.execute(_CLAIM_CONTACT, [{"contact_id": c.contact_id, "number": c.number, "now": now}
                                          for c in chosen])
        claimed.extend(chosen)
        if len(candidates) < batch:
            break       # no contact left that is due now
    if claimed:
        conn.execute(campaigns.update().where(campaigns.c.id == campaign_id).values(
            next_slot_at=claimed[-1].dial_at + 1 / cps,
            from_index=(campaign.from_index + len(claimed)) % len(campaign.from_numbers)))
    return claimed


_CLAIM_CONTACT = (contacts.update().where(contacts.c.id == sa.bindparam("contact_id"))
                  .values(state="in_flight", attempts=sa.bindparam("number"), next_due_at=None,
                          updated_at=sa.bindparam("now")))


def _due_contacts(conn: sa.Connection, campaign_id: str, now: datetime, passed: list[str],
                  limit: int) -> list[Mapping[str, Any]]:
    """Pending contacts due now, oldest due first, whose number has no live attempt (in any campaign); whether the
    number is on the do-not-call list. PostgreSQL: locked, skipping those another transaction holds."""
    live_elsewhere = sa.exists().where(attempts.c.phone == contacts.c.phone, attempts.c.state.in_(LIVE_STATES))
    query = (sa.select(contacts.c.id, contacts.c.phone, contacts.c.timezone, contacts.c.variables,
                       contacts.c.attempts, dnc.c.phone.is_not(None).label("on_dnc"))
             .select_from(contacts.outerjoin(dnc, dnc.c.phone == contacts.c.phone))
             .where(contacts.c.campaign_id == campaign_id, contacts.c.state == "pending",
                    contacts.c.next_due_at <= now, ~live_elsewhere)
             .order_by(contacts.c.next_due_at, contacts.c.row)
             .limit(limit)
             .with_for_update(of=contacts, skip_locked=True))
    if passed:
        query = query.where(contacts.c.id.not_in(passed))
    return conn.execute(query).mappings().all()


def _upsert_module(conn: sa.Connection):
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects import postgresql
        return postgresql
    from sqlalchemy.dialects import sqlite
    return sqlite


def _insert_attempts(conn: sa.Connection, chosen: list[Claim], *, carrier: str, now: datetime) -> set[str]:
    """Record the attempts, in one statement; the ids of those recorded. A number with a live attempt already
    (one another campaign claimed since we looked) is refused by the unique index on live numbers, and its
    contact waits (its slot stays unused: the rate only gets lower)."""
    if not chosen:
        return set()
    stmt = (_upsert_module(conn).insert(attempts)
            .on_conflict_do_nothing(index_elements=[attempts.c.phone], index_where=sa.text(LIVE_PREDICATE))
            .returning(attempts.c.id))
    rows = [dict(id=c.attempt_id, campaign_id=c.campaign_id, contact_id=c.contact_id, number=c.number,
                 phone=c.phone, from_number=c.from_number, carrier=carrier, state="claimed", dial_at=c.dial_at,
                 claimed_at=now, opted_out=False) for c in chosen]
    return set(conn.execute(stmt, rows).scalars())


def _set_contact(conn: sa.Connection, contact_id: str, now: datetime, **values) -> None:
    conn.execute(contacts.update().where(contacts.c.id == contact_id).values(updated_at=now, **values))


def release_claim(conn: sa.Connection, attempt_id: str) -> bool:
    """Undo a claim whose dial request was never sent: the attempt goes, the contact is pending again as it was."""
    attempt = get_attempt(conn, attempt_id)
    if attempt is None or attempt.state != "claimed":
        return False
    conn.execute(attempts.delete().where(attempts.c.id == attempt_id))
    _set_contact(conn, attempt.contact_id, attempt.claimed_at, state="pending", attempts=attempt.number - 1,
                 next_due_at=attempt.claimed_at)
    return True


# -- an attempt's progress -------------------------------------------------------------------------------------

# Built once: an attempt's callbacks run these several times per attempt, and building the statement cost more
# than running it (the SET clause of the update is the columns given with each execution).
_GET_ATTEMPT = sa.select(attempts).where(attempts.c.id == sa.bindparam("attempt_key"))
_UPDATE_ATTEMPT = attempts.update().where(attempts.c.id == sa.bindparam("attempt_key"))


def get_attempt(conn: sa.Connection, attempt_id: str) -> AttemptRow | None:
    row = conn.execute(_GET_ATTEMPT, {"attempt_key": attempt_id}).mappings().first()
    return None if row is None else AttemptRow.from_row(row)


def _update_attempt(conn: sa.Connection, attempt: AttemptRow, **values) -> AttemptRow:
    if values:
        conn.execute(_UPDATE_ATTEMPT, {"attempt_key": attempt.id, **values})
    return dataclasses.replace(attempt, **values)


def mark_dialing(conn: sa.Connection, attempt_id: str, *, now: datetime) -> bool:
    """The dial request is about to be sent: from here on a crash leaves the attempt to reconcile, never to redial."""
    result = conn.execute(attempts.update().where(attempts.c.id == attempt_id, attempts.c.state == "claimed")
                          .values(state="dialing", dialing_at=now))
    return result.rowcount == 1


def mark_dialed(conn: sa.Connection, attempt_id: str, carrier_call_id: str, *, now: datetime) -> bool:
    """The carrier took the dial request. A status callback may have come first: then the state stays ahead."""
    attempt = get_attempt(conn, attempt_id)
    if attempt is None:
        return False
    if attempt.carrier_call_id not in (None, carrier_call_id):
        log.warning("attempt_call_id_mismatch", attempt_id=attempt_id, stored=attempt.carrier_call_id,
                    given=carrier_call_id)
        return False
    values: dict[str, Any] = {"carrier_call_id": carrier_call_id}
    if attempt.state in ("claimed", "dialing"):
        values.update(state="dialed", dialing_at=attempt.dialing_at or now)
    _update_attempt(conn, attempt, **values)
    return True


def attempt_progress(conn: sa.Connection, attempt_id: str, *, carrier_call_id: str | None, status: str,
                     now: datetime, sequence: int | None = None, answered_by: str | None = None,
                     duration_s: float | None = None, detail: str | None = None) -> AttemptRow | None:
    """A carrier's status callback. Callbacks arrive late, twice, or out of order: one older than what is stored
    (by its sequence number, or by the state it reports) changes nothing and gives None. A final status records
    duration and detail; the attempt ends with ``finish_attempt``, which decides the outcome."""
    if status not in CARRIER_STATUSES:
        raise ValueError(f"status must be one of {', '.join(CARRIER_STATUSES)}, got {status!r}")
    attempt = get_attempt(conn, attempt_id)
    if attempt is None or attempt.state == "ended":
        return None
    if carrier_call_id is not None and attempt.carrier_call_id not in (None, carrier_call_id):
        log.warning("attempt_call_id_mismatch", attempt_id=attempt_id, stored=attempt.carrier_call_id,
                    given=carrier_call_id)
        return None
    if sequence is not None and attempt.last_sequence is not None and sequence <= attempt.last_sequence:
        return None
    values: dict[str, Any] = {}
    if status in FINAL_STATUSES:
        values.update(duration_s=duration_s if duration_s is not None else attempt.duration_s,
                      detail=detail if detail is not None else attempt.detail)
    elif _STATE_ORDER[status] <= _STATE_ORDER[attempt.state]:
        return None
    else:
        values["state"] = status
        if status == "answered":
            values["answered_at"] = attempt.answered_at or now
    if carrier_call_id is not None:
        values["carrier_call_id"] = carrier_call_id
    if sequence is not None:
        values["last_sequence"] = sequence
    if answered_by is not None:
        values["answered_by"] = answered_by
    return _update_attempt(conn, attempt, **values)


def final_progress(conn: sa.Connection, attempt_id: str, *, carrier_call_id: str | None, status: str,
                   now: datetime, sequence: int | None, duration_s: float | None, detail: str | None,
                   outcome_of: Callable[[str, "str | None"], "tuple[str, str | None]"], retry_after: RetryAfter,
                   due: Due) -> AttemptRow | None:
    """A final status callback and the attempt's end, in one transaction: ``attempt_progress``, then
    ``finish_attempt`` with the outcome ``outcome_of(status, answered_by)`` gives. None when the callback changed
    nothing (old, repeated, or the attempt had ended)."""
    if status not in FINAL_STATUSES:
        raise ValueError(f"a final status is one of {', '.join(FINAL_STATUSES)}, got {status!r}")
    row = attempt_progress(conn, attempt_id, carrier_call_id=carrier_call_id, status=status, now=now,
                           sequence=sequence, duration_s=duration_s, detail=detail)
    if row is None:
        return None
    outcome, why = outcome_of(status, row.answered_by)
    return finish_attempt(conn, attempt_id, outcome=outcome, now=now, detail=why or row.detail,
                          retry_after=retry_after, due=due)


def set_answered_by(conn: sa.Connection, attempt_id: str, answered_by: str, *,
                    now: datetime) -> AttemptRow | None:
    """The answering-machine verdict (it may come before or after the status callback saying answered)."""
    attempt = get_attempt(conn, attempt_id)
    if attempt is None:
        return None
    values: dict[str, Any] = {"answered_by": answered_by}
    if attempt.state != "ended" and _STATE_ORDER[attempt.state] < _STATE_ORDER["answered"]:
        values.update(state="answered", answered_at=attempt.answered_at or now)
    return _update_attempt(conn, attempt, **values)


def call_result(conn: sa.Connection, attempt_id: str, *, call_id: str | None, disposition: str | None,
                note: str | None, opted_out: bool, now: datetime) -> AttemptRow | None:
    """What the call itself concluded (set_outcome, opt_out), before or after the carrier's final status. The
    contact carries the disposition and note at once; an opt-out puts the number on the do-not-call list and,
    once the attempt has ended, the contact in state dnc (until then ``finish_attempt`` does it)."""
    attempt = get_attempt(conn, attempt_id)
    if attempt is None:
        return None
    values: dict[str, Any] = {"call_id": call_id or attempt.call_id, "opted_out": attempt.opted_out or opted_out}
    if disposition is not None:
        values["disposition"] = disposition
    if note is not None:
        values["note"] = note
    attempt = _update_attempt(conn, attempt, **values)
    contact_values = {k: v for k, v in (("disposition", disposition), ("note", note)) if v is not None}
    if opted_out:
        dnc_add(conn, attempt.phone, source="opt_out", note=None, now=now)
        if attempt.state == "ended":
            contact_values.update(state="dnc", next_due_at=None)
    if contact_values:
        _set_contact(conn, attempt.contact_id, now, **contact_values)
    return attempt


def finish_attempt(conn: sa.Connection, attempt_id: str, *, outcome: str, now: datetime,
                   detail: str | None, retry_after: RetryAfter, due: Due) -> AttemptRow | None:
    """End the attempt with its outcome (idempotent: an ended attempt stays as it ended) and decide the contact's
    next step: answered → done; opted out or on the do-not-call list → dnc; otherwise the retry policy for this
    outcome, counted over the contact's earlier attempts that ended the same way → pending at the next moment
    the window allows, or done. A canceled campaign's contacts are not rescheduled."""
    if outcome not in ATTEMPT_OUTCOMES:
        raise ValueError(f"outcome must be one of {', '.join(ATTEMPT_OUTCOMES)}, got {outcome!r}")
    row = conn.execute(
        sa.select(attempts, contacts.c.timezone.label("contact_timezone"), contacts.c.state.label("contact_state"),
                  campaigns.c.state.label("campaign_state"),
                  sa.exists().where(dnc.c.phone == attempts.c.phone).label("on_dnc"))
        .select_from(attempts.join(contacts, contacts.c.id == attempts.c.contact_id)
                     .join(campaigns, campaigns.c.id == attempts.c.campaign_id))
        .where(attempts.c.id == attempt_id)).mappings().first()
    if row is None or row["state"] == "ended":
        return None
    attempt = _update_attempt(conn, AttemptRow.from_row(row), state="ended", outcome=outcome, ended_at=now,
                              detail=detail if detail is not None else row["detail"])
    values: dict[str, Any] = {"last_outcome": outcome, "next_due_at": None}
    if attempt.opted_out or outcome == "dnc" or row["on_dnc"] or row["contact_state"] == "dnc":
        values.update(state="dnc", last_outcome="dnc")
    elif outcome == "answered":
        values["state"] = "done"
    else:
        delay = None
        if row["campaign_state"] != "canceled":
            earlier = conn.execute(sa.select(sa.func.count()).select_from(attempts).where(
                attempts.c.contact_id == attempt.contact_id, attempts.c.outcome == outcome,
                attempts.c.id != attempt.id)).scalar_one()
            delay = retry_after(outcome, earlier)
        next_due = None if delay is None else due(row["contact_timezone"], now + delay)
        values.update(state="done" if next_due is None else "pending", next_due_at=next_due)
    _set_contact(conn, attempt.contact_id, now, **values)
    return attempt


def stale_attempts(conn: sa.Connection, *, now: datetime, claimed_older_s: float, dialing_older_s: float,
                   dialed_older_s: float) -> list[AttemptRow]:
    """Attempts that should have moved on by now (a dialer or a callback lost, e.g. in a crash), to reconcile:
    claimed but never sent, sent but never confirmed, dialed (or ringing, answered) with no end heard of."""
    def before(seconds: float) -> datetime:
        return now - timedelta(seconds=seconds)
    since_dialing = sa.func.coalesce(attempts.c.answered_at, attempts.c.dialing_at, attempts.c.claimed_at)
    query = sa.select(attempts).where(sa.or_(
        sa.and_(attempts.c.state == "claimed", attempts.c.claimed_at < before(claimed_older_s)),
        sa.and_(attempts.c.state == "dialing", attempts.c.dialing_at < before(dialing_older_s)),
        sa.and_(attempts.c.state.in_(("dialed", "ringing", "answered")), since_dialing < before(dialed_older_s)),
    )).order_by(attempts.c.claimed_at)
    return [AttemptRow.from_row(row) for row in conn.execute(query).mappings()]


def outbound_context(conn: sa.Connection,
                     attempt_id: str) -> tuple[AttemptRow, ContactRow, CampaignRow] | None:
    """What a call needs to know about the attempt it is: the contact (variables) and the campaign (definition)."""
    attempt = get_attempt(conn, attempt_id)
    if attempt is None:
        return None
    contact = conn.execute(sa.select(contacts).where(contacts.c.id == attempt.contact_id)).mappings().one()
    campaign = _campaign_by(conn, campaigns.c.id == attempt.campaign_id)
    return attempt, ContactRow.from_row(contact), campaign


# -- what a campaign has done ----------------------------------------------------------------------------------

def contact_outcome(state: str, last_outcome: str | None, disposition: str | None) -> str:
    """A contact's outcome as status and export show it: what the call set, else the last attempt's outcome;
    ``dnc`` for do-not-call contacts; ``pending`` for contacts never dialed."""
    if state == "dnc":
        return "dnc"
    return disposition or last_outcome or "pending"


def campaign_status(conn: sa.Connection, campaign_id: str, *, now: datetime) -> dict[str, Any]:
    """Contacts by state and by outcome, attempts, dials in the last minute, and when the next pending contact
    is due (the next window opening when none is due now)."""
    by = (contacts.c.state, contacts.c.last_outcome, contacts.c.disposition)
    groups = conn.execute(sa.select(*by, sa.func.count()).where(contacts.c.campaign_id == campaign_id)
                          .group_by(*by)).all()
    states = dict.fromkeys(CONTACT_STATES, 0)
    outcomes: dict[str, int] = {}
    for state, last_outcome, disposition, count in groups:
        states[state] += count
        if state != "in_flight":
            outcome = contact_outcome(state, last_outcome, disposition)
            outcomes[outcome] = outcomes.get(outcome, 0) + count
    minute_ago = now.timestamp() - 60
    sent_in_last_minute = sa.and_(attempts.c.dial_at > minute_ago, attempts.c.state != "claimed")
    total_attempts, recent = conn.execute(
        sa.select(sa.func.count(), sa.func.count().filter(sent_in_last_minute))
        .where(attempts.c.campaign_id == campaign_id)).one()
    due_by_zone = {zone: due for zone, due in conn.execute(
        sa.select(contacts.c.timezone, sa.func.min(contacts.c.next_due_at))
        .where(contacts.c.campaign_id == campaign_id, contacts.c.state == "pending")
        .group_by(contacts.c.timezone))}
    due_by_zone = {zone: due for zone, due in due_by_zone.items() if due is not None}
    next_due = min(due_by_zone.values(), default=None)
    return {"contacts": sum(states.values()), **states, "outcomes": outcomes, "attempts": total_attempts,
            "dials_last_60s": recent, "rate_per_s": recent / 60, "next_due_at": next_due,
            "pending_due_by_zone": due_by_zone}


def export_rows(conn: sa.Connection, campaign_id: str) -> list[dict[str, Any]]:
    """One row per contact, in the contact list's order: phone, outcome, attempts, note, call_ids, then the
    contact's own columns."""
    call_ids: dict[str, list[str]] = {}
    for contact_id, call_id in conn.execute(
            sa.select(attempts.c.contact_id, attempts.c.call_id)
            .where(attempts.c.campaign_id == campaign_id, attempts.c.call_id.is_not(None))
            .order_by(attempts.c.contact_id, attempts.c.number)):
        call_ids.setdefault(contact_id, []).append(call_id)
    rows = conn.execute(sa.select(contacts).where(contacts.c.campaign_id == campaign_id).order_by(contacts.c.row))
    return [{"phone": c.phone, "outcome": contact_outcome(c.state, c.last_outcome, c.disposition),
             "attempts": c.attempts, "note": c.note or "", "call_ids": ";".join(call_ids.get(c.id, [])),
             **c.variables}
            for c in rows]


# -- do-not-call -----------------------------------------------------------------------------------------------

def dnc_add(conn: sa.Connection, phone: str, *, source: str, note: str | None, now: datetime) -> bool:
    """Put the number on the list; False when it was there already (then it stays as it was added)."""
    if source not in DNC_SOURCES:
        raise ValueError(f"source must be one of {', '.join(DNC_SOURCES)}, got {source!r}")
    stmt = _upsert_module(conn).insert(dnc).values(phone=phone, added_at=now, source=source, note=note)
    return conn.execute(stmt.on_conflict_do_nothing(index_elements=[dnc.c.phone])).rowcount == 1


def dnc_add_many(conn: sa.Connection, phones: list[str], *, source: str, now: datetime) -> int:
    """Put every number on the list (an import: one transaction, a statement per thousand numbers); how many were
    not on it already (those keep their first entry)."""
    if source not in DNC_SOURCES:
        raise ValueError(f"source must be one of {', '.join(DNC_SOURCES)}, got {source!r}")
    unique = list(dict.fromkeys(phones))
    insert = _upsert_module(conn).insert(dnc).on_conflict_do_nothing(index_elements=[dnc.c.phone])
    added = 0
    for start in range(0, len(unique), 1000):
        batch = unique[start:start + 1000]
        listed = set(conn.execute(sa.select(dnc.c.phone).where(dnc.c.phone.in_(batch))).scalars())
        new = [phone for phone in batch if phone not in listed]
        if new:
            conn.execute(insert, [dict(phone=phone, added_at=now, source=source, note=None) for phone in new])
        added += len(new)
    return added


def dnc_remove(conn: sa.Connection, phone: str) -> bool:
    return conn.execute(dnc.delete().where(dnc.c.phone == phone)).rowcount == 1


def dnc_list(conn: sa.Connection) -> list[DncEntry]:
    rows = conn.execute(sa.select(dnc).order_by(dnc.c.added_at, dnc.c.phone))
    return [DncEntry.from_row(row) for row in rows.mappings()]


def dnc_contains(conn: sa.Connection, phone: str) -> bool:
    return conn.execute(sa.select(dnc.c.phone).where(dnc.c.phone == phone)).first() is not None


def server_key(conn: sa.Connection, name: str) -> str:
    """The key called ``name``, made (random, 32 bytes as hex) by whichever process asks first."""
    found = conn.execute(sa.select(server_keys.c.value).where(server_keys.c.name == name)).scalar()
    if found is None:
        found = secrets.token_hex(32)
        conn.execute(server_keys.insert().values(name=name, value=found))
    return found
