"""calls: one record per call

Revision ID: 0001
Revises:
Create Date: 2025-01-01

campaign_id and attempt_id are filled by outbound campaigns (their tables come in a later revision).
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("carrier", sa.String, nullable=False),
        sa.Column("carrier_call_id", sa.String),
        sa.Column("persona", sa.String, nullable=False),
        sa.Column("from_number", sa.String),
        sa.Column("to_number", sa.String),
        sa.Column("direction", sa.String(16), nullable=False),
        sa.Column("started_at", UTC, nullable=False),
        sa.Column("answered_at", UTC),
        sa.Column("ended_at", UTC),
        sa.Column("duration_s", sa.Float),
        sa.Column("outcome", sa.String(32)),
        sa.Column("outcome_detail", sa.Text),
        sa.Column("transfer_target", sa.String),
        sa.Column("end_reason", sa.Text),
        sa.Column("engines", JSON, nullable=False),
        sa.Column("engine_switches", JSON, nullable=False),
        sa.Column("user_turns", sa.Integer, nullable=False),
        sa.Column("bot_turns", sa.Integer, nullable=False),
        sa.Column("barge_ins", sa.Integer, nullable=False),
        sa.Column("first_audio_ms", sa.Integer),
        sa.Column("turn_latencies_ms", JSON, nullable=False),
        sa.Column("tools", JSON, nullable=False),
        sa.Column("transcript", JSON, nullable=False),
        sa.Column("dtmf", JSON, nullable=False),
        sa.Column("recording_path", sa.Text),
        sa.Column("campaign_id", sa.String(64)),
        sa.Column("attempt_id", sa.String(64)),
    )
    op.create_index("ix_calls_started_at_id", "calls", ["started_at", "id"])
    op.create_index("ix_calls_persona_started_at", "calls", ["persona", "started_at"])
    op.create_index("ix_calls_outcome_started_at", "calls", ["outcome", "started_at"])
    op.create_index("ix_calls_campaign_id", "calls", ["campaign_id"])
    op.create_index("ix_calls_attempt_id", "calls", ["attempt_id"])


def downgrade() -> None:
    op.drop_table("calls")
