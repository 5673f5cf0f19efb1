"""Connecting to the database: URLs (drivers, masked passwords), per-database settings, and the ``Store``."""

from __future__ import annotations

import asyncio
import functools
import json
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import TypeVar

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from . import calls as calls_table
from . import campaigns
from .calls import CallRecord, CallSummary
from .campaigns import AttemptRow, CampaignRow, Claim, ContactRow, DncEntry, Due, RetryAfter
from .migrate import upgrade

log = structlog.get_logger("voicebot.store")
T = TypeVar("T")

ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
BUSY_TIMEOUT_MS = 5000       # how long SQLite waits for another writer (another worker process) before failing
CONNECT_TIMEOUT_S = 5.0      # PostgreSQL connect: a dead server must fail a write, not hang it


class StoreError(Exception):
    """The database cannot be opened or upgraded; the message names it (password masked) and what failed."""


def async_url(url: str) -> URL:
    """``sqlite:///…`` or ``postgresql://…`` (as config.yaml has them) with the asyncio driver we use."""
    try:
        parsed = make_url(url)
    except Exception:
        raise StoreError(f"not a database URL: {mask_url(url)}") from None
    backend = parsed.get_backend_name()
    if backend not in ASYNC_DRIVERS:
        raise StoreError(f"unsupported database {mask_url(url)}: expected sqlite:///<file> or postgresql://…")
    return parsed.set(drivername=ASYNC_DRIVERS[backend])


def mask_url(url: str | URL) -> str:
    """The URL as it may appear in a log line or a message: any password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:   # unparsable: show the scheme only, the rest may hold a password
        return str(url).split("://", 1)[0] + "://***"


def describe_error(exc: BaseException, url: str | URL) -> str:
    """An exception as text for a log line: the driver's own error, without the statement and its parameters
    (which carry transcripts), the URL's password scrubbed should a driver have echoed it."""
    inner = getattr(exc, "orig", None) or exc      # SQLAlchemy wraps the driver's error
    text = f"{type(inner).__name__}: {inner}".strip()
    try:
        password = make_url(url).password
    except Exception:
        password = None
    return text.replace(password, "***") if password else text


def _sqlite_settings(busy_timeout_ms: int):
    def on_connect(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")       # readers never wait for the writer, nor it for them
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()
    return on_connect


_JSON_SERIALIZER = functools.partial(json.dumps, ensure_ascii=False)


def create_engine(url: str, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS, pool_size: int = 5) -> AsyncEngine:
    target = async_url(url)
    serializer = _JSON_SERIALIZER
    if target.get_backend_name() == "sqlite":
        if not target.database or target.database == ":memory:":
            raise StoreError(f"{mask_url(url)}: a SQLite database needs a file path (sqlite:///<file>)")
        engine = create_async_engine(target, json_serializer=serializer)
        sa.event.listen(engine.sync_engine, "connect", _sqlite_settings(busy_timeout_ms))
        return engine
    return create_async_engine(target, json_serializer=serializer, pool_size=pool_size, max_overflow=pool_size,
                               pool_pre_ping=True, connect_args={"timeout": CONNECT_TIMEOUT_S})


def create_sqlite_thread_engine(engine: AsyncEngine, *, busy_timeout_ms: int) -> sa.Engine:
    """The standard-driver twin of a SQLite engine, for whole transactions run in a worker thread."""
    sync = sa.create_engine(engine.url.set(drivername="sqlite"), json_serializer=_JSON_SERIALIZER,
                            connect_args={"check_same_thread": False})
    sa.event.listen(sync, "connect", _sqlite_settings(busy_timeout_ms))
    return sync


class Store:
    """The database: call records, outbound campaigns (contacts, attempts) and the do-not-call list.
    ``await Store.open(url)`` connects and upgrades the schema to the newest revision."""

    def __init__(self, engine: AsyncEngine, url: str, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        self.engine = engine
        self.url = url
        self.safe_url = mask_url(url)
        self._upsert_calls = calls_table.upsert_statement(engine.dialect.name)
        self._sqlite_sync = (create_sqlite_thread_engine(engine, busy_timeout_ms=busy_timeout_ms)
                             if engine.dialect.name == "sqlite" else None)
        # This process's SQLite write transactions take turns here rather than in SQLite's busy handler, which
        # sleeps 1, 2, 5 … 100 ms between tries: under a campaign's load the threads waiting on each other spent
        # more than a second per attempt asleep (benchmarks/campaign_dialer.py). Other processes on the same file
        # still meet the busy timeout.
        self._sqlite_write_turn = threading.Lock()

    @classmethod
    async def open(cls, url: str, *, migrate: bool = True, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> "Store":
        engine = create_engine(url, busy_timeout_ms=busy_timeout_ms)
        store = cls(engine, url, busy_timeout_ms=busy_timeout_ms)
        try:
            if migrate:
                before, after = await upgrade(engine)
                if before != after:
                    log.info("database_upgraded", url=store.safe_url, from_revision=before, to_revision=after)
            else:
                async with engine.connect() as conn:
                    await conn.execute(sa.text("SELECT 1"))
        except Exception as exc:
            await engine.dispose()
            raise StoreError(f"cannot open the database {store.safe_url}: {describe_error(exc, url)}") from None
        log.info("database_open", url=store.safe_url, backend=engine.dialect.name)
        return store

    async def ping(self) -> None:
        """One round trip to the database (the server's readiness); raises what connecting or asking raised."""
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()
        if self._sqlite_sync is not None:
            self._sqlite_sync.dispose()

    # -- call records --------------------------------------------------------------------------
    async def save_call(self, record: CallRecord) -> None:
        """Insert the record, or replace the one with its id (a call is saved when it starts and when it ends)."""
        await self.save_calls([record])

    async def save_calls(self, records: Sequence[CallRecord]) -> None:
        """Save several records in one transaction (in order: a later one with the same id wins)."""
        if not records:
            return
        async with self.engine.begin() as conn:
            await conn.execute(self._upsert_calls, [r.to_row() for r in records])

    async def get_call(self, call_id: str) -> CallRecord | None:
        async with self.engine.connect() as conn:
            return await calls_table.get(conn, call_id)

    async def list_calls(self, *, persona: str | None = None, since: datetime | None = None,
                         until: datetime | None = None, outcome: str | None = None, limit: int = 50,
                         cursor: str | None = None, carrier: str | None = None,
                         number: str | None = None) -> tuple[list[CallSummary], str | None]:
        """Newest first; ``next_cursor`` continues after the last one (None on the last page)."""
        async with self.engine.connect() as conn:
            return await calls_table.page(conn, persona=persona, since=since, until=until, outcome=outcome,
                                          limit=limit, cursor=cursor, carrier=carrier, number=number)

    # -- campaigns -----------------------------------------------------------------------------
    async def _run(self, work: Callable[..., T], *args, write: bool, **kwargs) -> T:
        """One transaction's work (a function of ``campaigns`` on a synchronous connection), committed.

        ``write``: the work reads, then writes what it read decides. On SQLite such a transaction takes the
        write lock at once (BEGIN IMMEDIATE, waiting up to the busy timeout): a deferred one would read a
        snapshot another process may change before it writes, and then fail instead of waiting. PostgreSQL
        locks what it reads with FOR UPDATE where it matters (``campaigns.claim``).

        On SQLite the whole transaction runs in a worker thread on the standard driver: the asyncio driver hands
        every statement to its thread and back several times, which made an attempt's six updates cost three
        times as much (benchmarks/campaign_store.py)."""
        if self._sqlite_sync is None:
            async with self.engine.begin() as conn:
                return await conn.run_sync(work, *args, **kwargs)
        return await asyncio.to_thread(self._run_sqlite, work, args, kwargs, write)

    def _run_sqlite(self, work: Callable[..., T], args: tuple, kwargs: dict, write: bool) -> T:
        if not write:
            return self._run_sqlite_transaction(work, args, kwargs, write)
        with self._sqlite_write_turn:
            return self._run_sqlite_transaction(work, args, kwargs, write)

    def _run_sqlite_transaction(self, work: Callable[..., T], args: tuple, kwargs: dict, write: bool) -> T:
        with self._sqlite_sync.connect() as conn:
            if write:
                conn.exec_driver_sql("BEGIN IMMEDIATE")     # SQLAlchemy's own begin sends nothing on SQLite
            result = work(conn, *args, **kwargs)
            conn.commit()
            return result

    async def create_campaign(self, spec, contacts: Sequence, *, now: datetime) -> str:
        """A new campaign (state created) with its contacts, all due now; its id. ``spec`` is a CampaignSpec,
        ``contacts`` Contacts. CampaignExists if the name is taken."""
        try:
            return await self._run(campaigns.create_campaign, spec, contacts, now=now, write=True)
        except sa.exc.IntegrityError:
            # Another instance created one of that name between our check and our insert.
            if await self.get_campaign(spec.name) is not None:
                raise campaigns.CampaignExists(f"a campaign named {spec.name!r} exists already") from None
            raise

    async def get_campaign(self, name_or_id: str) -> CampaignRow | None:
        return await self._run(campaigns.get_campaign, name_or_id, write=False)

    async def list_campaigns(self) -> list[CampaignRow]:
        return await self._run(campaigns.list_campaigns, write=False)

    async def running_campaigns(self) -> list[CampaignRow]:
        return await self._run(campaigns.list_campaigns, state="running", write=False)

    async def set_campaign_state(self, name: str, state: str, *, now: datetime) -> CampaignRow:
        """UnknownCampaign, or InvalidTransition unless created→running, running⇄paused, running→done,
        created|running|paused→canceled."""
        return await self._run(campaigns.set_campaign_state, name, state, now=now, write=True)

    async def claim(self, campaign_id: str, *, now: datetime, horizon_s: float = 1.0, limit: int,
                    due: Due) -> list[Claim]:
        """Contacts to dial now, with their rate slots, within the campaign's limits across every instance.
        ``due(timezone, now)`` is the calling window: now, a later opening, or None when the campaign is over."""
        return await self._run(campaigns.claim, campaign_id, now=now, horizon_s=horizon_s, limit=limit, due=due,
                               write=True)

    async def release_claim(self, attempt_id: str) -> bool:
        return await self._run(campaigns.release_claim, attempt_id, write=True)

    async def mark_dialing(self, attempt_id: str, *, now: datetime) -> bool:
        return await self._run(campaigns.mark_dialing, attempt_id, now=now, write=True)

    async def mark_dialed(self, attempt_id: str, carrier_call_id: str, *, now: datetime) -> bool:
        return await self._run(campaigns.mark_dialed, attempt_id, carrier_call_id, now=now, write=True)

    async def attempt_progress(self, attempt_id: str, *, carrier_call_id: str | None, status: str, now: datetime,
                               sequence: int | None = None, answered_by: str | None = None,
                               duration_s: float | None = None, detail: str | None = None) -> AttemptRow | None:
        return await self._run(campaigns.attempt_progress, attempt_id, carrier_call_id=carrier_call_id,
                               status=status, now=now, sequence=sequence, answered_by=answered_by,
                               duration_s=duration_s, detail=detail, write=True)

    async def final_progress(self, attempt_id: str, *, carrier_call_id: str | None, status: str, now: datetime,
                             sequence: int | None = None, duration_s: float | None = None, detail: str | None = None,
                             outcome_of, retry_after: RetryAfter, due: Due) -> AttemptRow | None:
        """A final status and the attempt's end in one transaction; the ended attempt, or None (nothing changed)."""
        return await self._run(campaigns.final_progress, attempt_id, carrier_call_id=carrier_call_id, status=status,
                               now=now, sequence=sequence, duration_s=duration_s, detail=detail,
                               outcome_of=outcome_of, retry_after=retry_after, due=due, write=True)

    async def set_answered_by(self, attempt_id: str, answered_by: str, *, now: datetime) -> AttemptRow | None:
        return await self._run(campaigns.set_answered_by, attempt_id, answered_by, now=now, write=True)

    async def call_result(self, attempt_id: str, *, call_id: str | None, disposition: str | None = None,
                          note: str | None = None, opted_out: bool = False,
                          now: datetime | None = None) -> AttemptRow | None:
        return await self._run(campaigns.call_result, attempt_id, call_id=call_id, disposition=disposition,
                               note=note, opted_out=opted_out, now=now or _utcnow(), write=True)

    async def finish_attempt(self, attempt_id: str, *, outcome: str, now: datetime, detail: str | None = None,
                             retry_after: RetryAfter, due: Due) -> AttemptRow | None:
        """The ended attempt, or None when it had ended already (nothing changes then)."""
        return await self._run(campaigns.finish_attempt, attempt_id, outcome=outcome, now=now, detail=detail,
                               retry_after=retry_after, due=due, write=True)

    async def stale_attempts(self, *, now: datetime, claimed_older_s: float, dialing_older_s: float,
                             dialed_older_s: float) -> list[AttemptRow]:
        return await self._run(campaigns.stale_attempts, now=now, claimed_older_s=claimed_older_s,
                               dialing_older_s=dialing_older_s, dialed_older_s=dialed_older_s, write=False)

    async def attempt(self, attempt_id: str) -> AttemptRow | None:
        return await self._run(campaigns.get_attempt, attempt_id, write=False)

    async def outbound_context(self, attempt_id: str) -> tuple[AttemptRow, ContactRow, CampaignRow] | None:
        return await self._run(campaigns.outbound_context, attempt_id, write=False)

    async def campaign_status(self, campaign_id: str, *, now: datetime | None = None) -> dict:
        return await self._run(campaigns.campaign_status, campaign_id, now=now or _utcnow(), write=False)

    async def export_rows(self, campaign_id: str) -> list[dict]:
        return await self._run(campaigns.export_rows, campaign_id, write=False)

    # -- do-not-call ---------------------------------------------------------------------------
    async def dnc_add(self, phone: str, *, source: str, note: str | None = None, now: datetime) -> bool:
        """False when the number was on the list already."""
        return await self._run(campaigns.dnc_add, phone, source=source, note=note, now=now, write=True)

    async def dnc_add_many(self, phones: list[str], *, source: str, now: datetime) -> int:
        """How many were not on the list already."""
        return await self._run(campaigns.dnc_add_many, phones, source=source, now=now, write=True)

    async def dnc_remove(self, phone: str) -> bool:
        return await self._run(campaigns.dnc_remove, phone, write=True)

    async def dnc_list(self) -> list[DncEntry]:
        return await self._run(campaigns.dnc_list, write=False)

    async def dnc_contains(self, phone: str) -> bool:
        return await self._run(campaigns.dnc_contains, phone, write=False)

    async def server_key(self, name: str) -> str:
        """A random key shared by every process on this database (made by the first to ask)."""
        try:
            return await self._run(campaigns.server_key, name, write=True)
        except sa.exc.IntegrityError:      # another process made it at the same moment: theirs it is
            return await self._run(campaigns.server_key, name, write=False)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)
