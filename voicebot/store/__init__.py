"""The database layer (SQLAlchemy Core, asyncio): SQLite by default, PostgreSQL by URL, migrations at startup:
call records, outbound campaigns and the do-not-call list.

``Store`` reads and writes; ``RecordWriter`` takes records from calls without making them wait."""

from .calls import DIRECTIONS, MAX_PAGE, OUTCOMES, CallRecord, CallSummary, InvalidCursor, parse_time
from .campaigns import (AttemptRow, CampaignExists, CampaignRow, Claim, ContactRow, DncEntry, InvalidTransition,
                        UnknownCampaign)
from .database import Store, StoreError, mask_url
from .writer import RecordWriter, default_spool_path

__all__ = ["AttemptRow", "CampaignExists", "CampaignRow", "Claim", "ContactRow", "DncEntry", "InvalidTransition",
           "UnknownCampaign", "CallRecord", "CallSummary", "DIRECTIONS", "InvalidCursor", "MAX_PAGE", "OUTCOMES", "RecordWriter",
           "Store", "StoreError", "default_spool_path", "mask_url", "parse_time"]
