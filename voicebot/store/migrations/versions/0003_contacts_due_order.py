"""contacts: the due-contacts index also orders by row, so a claim reads the first due contacts off the index

Without ``row`` in it, every claim sorted all of a campaign's due contacts (10 000 at a campaign's start) to take
the first few dozen, in the write transaction every other update of the campaign waits for.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_contacts_campaign_state_due_row", "contacts", ["campaign_id", "state", "next_due_at", "row"])
    op.drop_index("ix_contacts_campaign_state_due", table_name="contacts")


def downgrade() -> None:
    op.create_index("ix_contacts_campaign_state_due", "contacts", ["campaign_id", "state", "next_due_at"])
    op.drop_index("ix_contacts_campaign_state_due_row", table_name="contacts")
