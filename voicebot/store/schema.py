"""The tables, as the application reads and writes them (the migrations in ``migrations/`` create them)."""

from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import TypeDecorator

metadata = sa.MetaData()


class UTCDateTime(TypeDecorator):
    """Timezone-aware datetimes in, UTC datetimes out, on every database. SQLite keeps datetimes as text without
    an offset: storing them all as UTC keeps that text sortable and comparable."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"datetime {value.isoformat()} has no timezone; store timezone-aware datetimes")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


# JSON documents: JSONB on PostgreSQL (indexable, compact), JSON text elsewhere.
JSONDocument = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

calls = sa.Table(
    "calls", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("carrier", sa.String, nullable=False),
    sa.Column("carrier_call_id", sa.String),
    sa.Column("persona", sa.String, nullable=False),
    sa.Column("from_number", sa.String),
    sa.Column("to_number", sa.String),
    sa.Column("direction", sa.String(16), nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("answered_at", UTCDateTime),
    sa.Column("ended_at", UTCDateTime),
    sa.Column("duration_s", sa.Float),
    sa.Column("outcome", sa.String(32)),
    sa.Column("outcome_detail", sa.Text),
    sa.Column("transfer_target", sa.String),
    sa.Column("end_reason", sa.Text),
    sa.Column("engines", JSONDocument, nullable=False),
    sa.Column("engine_switches", JSONDocument, nullable=False),
    sa.Column("user_turns", sa.Integer, nullable=False),
    sa.Column("bot_turns", sa.Integer, nullable=False),
    sa.Column("barge_ins", sa.Integer, nullable=False),
    sa.Column("first_audio_ms", sa.Integer),
    sa.Column("turn_latencies_ms", JSONDocument, nullable=False),
    sa.Column("tools", JSONDocument, nullable=False),
    sa.Column("transcript", JSONDocument, nullable=False),
    sa.Column("dtmf", JSONDocument, nullable=False),
    sa.Column("recording_path", sa.Text),
    sa.Column("campaign_id", sa.String(64)),
    sa.Column("attempt_id", sa.String(64)),
    # Newest first, page by page: (started_at, id) is the listing order and the keyset of its cursor.
    sa.Index("ix_calls_started_at_id", "started_at", "id"),
    sa.Index("ix_calls_persona_started_at", "persona", "started_at"),
    sa.Index("ix_calls_outcome_started_at", "outcome", "started_at"),
    sa.Index("ix_calls_campaign_id", "campaign_id"),
    sa.Index("ix_calls_attempt_id", "attempt_id"),
)
