"""campaigns: outbound campaigns, their contacts and dial attempts, and the do-not-call list

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
UTC = sa.DateTime(timezone=True)
# As in schema.LIVE_PREDICATE at this revision (a migration never imports what later code may change).
LIVE_PREDICATE = "state IN ('claimed', 'dialing', 'dialed', 'ringing', 'answered')"


def upgrade() -> None:
    op.create_table(
        "campaigns",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("definition", JSON, nullable=False),
        sa.Column("carrier", sa.String(32), nullable=False),
        sa.Column("from_numbers", JSON, nullable=False),
        sa.Column("max_concurrent_calls", sa.Integer, nullable=False),
        sa.Column("calls_per_second", sa.Float, nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("started_at", UTC),
        sa.Column("ended_at", UTC),
        sa.Column("next_slot_at", sa.Float, nullable=False),
        sa.Column("from_index", sa.Integer, nullable=False),
    )
    op.create_table(
        "contacts",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("campaign_id", sa.String(16), sa.ForeignKey("campaigns.id"), nullable=False),
        sa.Column("row", sa.Integer, nullable=False),
        sa.Column("phone", sa.String(32), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("variables", sa.JSON, nullable=False),      # json keeps the columns' order; jsonb would not
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_due_at", UTC),
        sa.Column("last_outcome", sa.String(32)),
        sa.Column("disposition", sa.String(64)),
        sa.Column("note", sa.Text),
        sa.Column("updated_at", UTC, nullable=False),
        sa.UniqueConstraint("campaign_id", "phone", name="uq_contacts_campaign_phone"),
    )
    op.create_index("ix_contacts_campaign_state_due", "contacts", ["campaign_id", "state", "next_due_at"])
    op.create_table(
        "attempts",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("campaign_id", sa.String(16), sa.ForeignKey("campaigns.id"), nullable=False),
        sa.Column("contact_id", sa.String(16), sa.ForeignKey("contacts.id"), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("phone", sa.String(32), nullable=False),
        sa.Column("from_number", sa.String(32), nullable=False),
        sa.Column("carrier", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("dial_at", sa.Float, nullable=False),
        sa.Column("claimed_at", UTC, nullable=False),
        sa.Column("dialing_at", UTC),
        sa.Column("answered_at", UTC),
        sa.Column("ended_at", UTC),
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
    )
    op.create_index("ix_attempts_campaign_state", "attempts", ["campaign_id", "state"])
    op.create_index("ix_attempts_contact", "attempts", ["contact_id"])
    op.create_index("ux_attempts_live_phone", "attempts", ["phone"], unique=True,
                    sqlite_where=sa.text(LIVE_PREDICATE), postgresql_where=sa.text(LIVE_PREDICATE))
    op.create_table(
        "dnc",
        sa.Column("phone", sa.String(32), primary_key=True),
        sa.Column("added_at", UTC, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("note", sa.Text),
    )
    op.create_table(
        "server_keys",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(128), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("server_keys")
    op.drop_table("dnc")
    op.drop_table("attempts")
    op.drop_table("contacts")
    op.drop_table("campaigns")
