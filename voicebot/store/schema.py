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

# -- outbound campaigns ----------------------------------------------------------------------------------------
# Attempt states in which a call is (or may be) live at the carrier: they count against the campaign's
# concurrency, and one phone has at most one such attempt, across every campaign.
LIVE_STATES = ("claimed", "dialing", "dialed", "ringing", "answered")
# SQL of "the attempt is live", as written in the partial unique index and the upsert that relies on it (the two
# must say the same thing for the database to match them).
LIVE_PREDICATE = "state IN ('claimed', 'dialing', 'dialed', 'ringing', 'answered')"

campaigns = sa.Table(
    "campaigns", metadata,
    sa.Column("id", sa.String(16), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("definition", JSONDocument, nullable=False),
    # What the dialer needs on every claim, out of the definition: reading them never depends on its JSON shape.
    sa.Column("carrier", sa.String(32), nullable=False),
    sa.Column("from_numbers", JSONDocument, nullable=False),
    sa.Column("max_concurrent_calls", sa.Integer, nullable=False),
    sa.Column("calls_per_second", sa.Float, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("started_at", UTCDateTime),
    sa.Column("ended_at", UTCDateTime),
    # The global dial-rate schedule (epoch seconds): the first slot free for the next claim, on any instance.
    sa.Column("next_slot_at", sa.Float, nullable=False),
    sa.Column("from_index", sa.Integer, nullable=False),
)

contacts = sa.Table(
    "contacts", metadata,
    sa.Column("id", sa.String(16), primary_key=True),
    sa.Column("campaign_id", sa.String(16), sa.ForeignKey("campaigns.id"), nullable=False),
    sa.Column("row", sa.Integer, nullable=False),
    sa.Column("phone", sa.String(32), nullable=False),
    sa.Column("timezone", sa.String(64), nullable=False),
    # JSON, not JSONB: JSONB reorders keys, and the export gives a contact's columns in the list's order.
    sa.Column("variables", sa.JSON, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_due_at", UTCDateTime),
    sa.Column("last_outcome", sa.String(32)),
    sa.Column("disposition", sa.String(64)),
    sa.Column("note", sa.Text),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("campaign_id", "phone", name="uq_contacts_campaign_phone"),
    sa.Index("ix_contacts_campaign_state_due_row", "campaign_id", "state", "next_due_at", "row"),
)

attempts = sa.Table(
    "attempts", metadata,
    sa.Column("id", sa.String(16), primary_key=True),
    sa.Column("campaign_id", sa.String(16), sa.ForeignKey("campaigns.id"), nullable=False),
    sa.Column("contact_id", sa.String(16), sa.ForeignKey("contacts.id"), nullable=False),
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("phone", sa.String(32), nullable=False),
    sa.Column("from_number", sa.String(32), nullable=False),
    sa.Column("carrier", sa.String(32), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("dial_at", sa.Float, nullable=False),
    sa.Column("claimed_at", UTCDateTime, nullable=False),
    sa.Column("dialing_at", UTCDateTime),
    sa.Column("answered_at", UTCDateTime),
    sa.Column("ended_at", UTCDateTime),
    sa.Column("carrier_call_id", sa.String(128), unique=True),
    sa.Column("answered_by", sa.String(32)),
    sa.Column("outcome", sa.String(32)),
    sa.Column("detail", sa.Text),
    sa.Column("duration_s", sa.Float),
    sa.Column("call_id", sa.String(64)),
    sa.Column("disposition", sa.String(64)),
    sa.Column("note", sa.Text),
    sa.Column("opted_out", sa.Boolean, nullable=False),
    sa.Column("last_sequence", sa.Integer),
    sa.Index("ix_attempts_campaign_state", "campaign_id", "state"),
    sa.Index("ix_attempts_contact", "contact_id"),
    # Never two live calls to one number, whichever instance or campaign claims it: the database refuses it.
    sa.Index("ux_attempts_live_phone", "phone", unique=True,
             sqlite_where=sa.text(LIVE_PREDICATE), postgresql_where=sa.text(LIVE_PREDICATE)),
)

dnc = sa.Table(
    "dnc", metadata,
    sa.Column("phone", sa.String(32), primary_key=True),
    sa.Column("added_at", UTCDateTime, nullable=False),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("note", sa.Text),
)

# Keys every process sharing the database must agree on (what signs campaign attempt tokens), made once.
server_keys = sa.Table(
    "server_keys", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(128), nullable=False),
)
