"""Call records: one per call, as the Call produces it, and the queries on the ``calls`` table."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from .schema import calls

OUTCOMES = ("completed", "caller_hung_up", "bot_hung_up", "transferred", "max_duration", "silence", "failed",
            "voicemail",      # a campaign call a machine answered
            "drained")        # the server stopped (SIGTERM) and ended the call after server.drain_seconds
DIRECTIONS = ("inbound", "outbound")
MAX_PAGE = 500
DATETIME_FIELDS = ("started_at", "answered_at", "ended_at")


@dataclass(frozen=True, kw_only=True)
class CallSummary:
    """What a list of calls shows: who, when, how it ended, how it went. ``outcome`` is None while the call
    is in progress (a record is saved when the call starts and again when it ends)."""

    id: str                                 # our call id (16 hex digits)
    carrier: str
    persona: str
    started_at: datetime                    # timezone-aware; kept as UTC
    carrier_call_id: str | None = None
    from_number: str | None = None
    to_number: str | None = None
    direction: str = "inbound"
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    duration_s: float | None = None
    outcome: str | None = None
    outcome_detail: str | None = None       # e.g. why the call failed
    transfer_target: str | None = None
    end_reason: str | None = None
    engines: list[str] = field(default_factory=list)    # in the order the call used them
    user_turns: int = 0
    bot_turns: int = 0
    barge_ins: int = 0
    first_audio_ms: int | None = None
    recording_path: str | None = None
    campaign_id: str | None = None
    attempt_id: str | None = None

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem:
            raise ValueError(f"call record {self.id!r}: {problem}")
        for name in DATETIME_FIELDS:
            value = getattr(self, name)
            if value is not None and value.tzinfo is not timezone.utc:
                object.__setattr__(self, name, value.astimezone(timezone.utc))

    def _problem(self) -> str | None:
        if not isinstance(self.id, str) or not 0 < len(self.id) <= 64:
            return "id must be a string of 1 to 64 characters"
        for name in ("carrier", "persona"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                return f"{name} must be a non-empty string"
        if self.direction not in DIRECTIONS:
            return f"direction must be one of {', '.join(DIRECTIONS)}, got {self.direction!r}"
        if self.outcome is not None and self.outcome not in OUTCOMES:
            return f"outcome must be one of {', '.join(OUTCOMES)} (or None while in progress), got {self.outcome!r}"
        for name in DATETIME_FIELDS:
            value = getattr(self, name)
            if name == "started_at" and value is None:
                return "started_at is required"
            if value is not None and (not isinstance(value, datetime) or value.tzinfo is None):
                return f"{name} must be a timezone-aware datetime, got {value!r}"
        for name in ("user_turns", "bot_turns", "barge_ins"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                return f"{name} must be a whole number ≥ 0, got {value!r}"
        if not isinstance(self.engines, list) or not all(isinstance(e, str) for e in self.engines):
            return f"engines must be a list of engine names, got {self.engines!r}"
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: datetimes as ISO 8601 in UTC."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.isoformat() if isinstance(value, datetime) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CallSummary":
        """The inverse of ``to_dict`` (ISO 8601 datetimes); an unknown field is an error, not dropped."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"call record: unknown field {unknown[0]!r}")
        values = dict(data)
        for name in DATETIME_FIELDS:
            if isinstance(values.get(name), str):
                try:
                    values[name] = datetime.fromisoformat(values[name])
                except ValueError:
                    raise ValueError(f"call record: {name} is not an ISO 8601 datetime: {values[name]!r}") from None
        return cls(**values)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "CallSummary":
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls)})


@dataclass(frozen=True, kw_only=True)
class CallRecord(CallSummary):
    """The whole record of one call. Build it once the values are final: the record is written later, off the
    call's path, as it is then."""

    engine_switches: list[dict] = field(default_factory=list)   # {from, to, reason, t_ms, …}
    turn_latencies_ms: list[int] = field(default_factory=list)
    tools: list[dict] = field(default_factory=list)             # {name, arguments, result, ok, t_ms, duration_ms}
    # {role, text, t_ms} and, for a bot turn the caller cut off, interrupted / heard_ms / full_text
    transcript: list[dict] = field(default_factory=list)
    dtmf: list[dict] = field(default_factory=list)              # {digit, t_ms}

    def _problem(self) -> str | None:
        problem = super()._problem()
        if problem:
            return problem
        for name in ("engine_switches", "tools", "transcript", "dtmf"):
            value = getattr(self, name)
            if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
                return f"{name} must be a list of mappings"
        if not isinstance(self.turn_latencies_ms, list):
            return "turn_latencies_ms must be a list of milliseconds"
        return None

    def to_row(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def summary(self) -> CallSummary:
        return CallSummary(**{f.name: getattr(self, f.name) for f in dataclasses.fields(CallSummary)})


SUMMARY_COLUMNS = [calls.c[f.name] for f in dataclasses.fields(CallSummary)]


def upsert_statement(dialect: str) -> sa.Insert:
    """INSERT … ON CONFLICT (id) DO UPDATE: saving a record with a known id replaces that record."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise ValueError(f"no upsert for database {dialect!r}")
    stmt = insert(calls)
    return stmt.on_conflict_do_update(index_elements=[calls.c.id],
                                      set_={c.name: stmt.excluded[c.name] for c in calls.c if c.name != "id"})


async def get(conn: AsyncConnection, call_id: str) -> CallRecord | None:
    row = (await conn.execute(sa.select(calls).where(calls.c.id == call_id))).mappings().first()
    return None if row is None else CallRecord.from_row(row)


class InvalidCursor(ValueError):
    """A cursor this server did not hand out (or one mangled on the way)."""


def encode_cursor(summary: CallSummary) -> str:
    """Opaque to clients: where the page ended, in listing order (started_at, then id)."""
    raw = json.dumps([summary.started_at.isoformat(), summary.id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        started, call_id = json.loads(raw)
        started_at = datetime.fromisoformat(started)
        if started_at.tzinfo is None or not isinstance(call_id, str):
            raise ValueError
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError):
        raise InvalidCursor("not a cursor this server handed out") from None
    return started_at, call_id


def parse_time(text: str) -> datetime:
    """An ISO 8601 date or time as a filter bound; without a UTC offset it is taken as UTC."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"expected an ISO 8601 date or time, e.g. 2025-03-14T09:30:00Z, got {text!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _aware(name: str, value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")
    return value


def number_digits(text: str) -> str:
    """What a number filter matches on: its digits (and a leading +), as people type a number in any format;
    ValueError when there is no digit."""
    digits = re.sub(r"[^0-9]", "", text)
    if not digits:
        raise ValueError(f"expected digits of a phone number, got {text!r}")
    return ("+" if text.strip().startswith("+") else "") + digits


async def page(conn: AsyncConnection, *, persona: str | None, since: datetime | None, until: datetime | None,
               outcome: str | None, limit: int, cursor: str | None, carrier: str | None = None,
               number: str | None = None) -> tuple[list[CallSummary], str | None]:
    """One page of calls, newest first, by keyset (started_at, id): no row is skipped or repeated as rows are
    added, and a deep page costs what the first one does. ``number``: calls from or to a number containing
    these digits (any format: see :func:`number_digits`)."""
    if not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a whole number ≥ 1, got {limit!r}")
    if outcome is not None and outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, got {outcome!r}")
    limit = min(limit, MAX_PAGE)
    query = sa.select(*SUMMARY_COLUMNS).order_by(calls.c.started_at.desc(), calls.c.id.desc()).limit(limit + 1)
    if persona is not None:
        query = query.where(calls.c.persona == persona)
    if outcome is not None:
        query = query.where(calls.c.outcome == outcome)
    if carrier is not None:
        query = query.where(calls.c.carrier == carrier)
    if number is not None:
        pattern = f"%{number_digits(number)}%"      # digits and + only: no LIKE wildcard gets through
        query = query.where(sa.or_(calls.c.from_number.like(pattern), calls.c.to_number.like(pattern)))
    if _aware("since", since) is not None:
        query = query.where(calls.c.started_at >= since)
    if _aware("until", until) is not None:
        query = query.where(calls.c.started_at < until)
    if cursor is not None:
        started_at, call_id = decode_cursor(cursor)
        query = query.where(sa.or_(calls.c.started_at < started_at,
                                   sa.and_(calls.c.started_at == started_at, calls.c.id < call_id)))
    rows = (await conn.execute(query)).mappings().all()
    summaries = [CallSummary.from_row(row) for row in rows[:limit]]
    next_cursor = encode_cursor(summaries[-1]) if len(rows) > limit else None
    return summaries, next_cursor
