"""Connecting to the database: URLs (drivers, masked passwords), per-database settings, and the ``Store``."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from . import calls as calls_table
from .calls import CallRecord, CallSummary
from .migrate import upgrade

log = structlog.get_logger("voicebot.store")

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


def create_engine(url: str, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS, pool_size: int = 5) -> AsyncEngine:
    target = async_url(url)
    serializer = functools.partial(json.dumps, ensure_ascii=False)
    if target.get_backend_name() == "sqlite":
        if not target.database or target.database == ":memory:":
            raise StoreError(f"{mask_url(url)}: a SQLite database needs a file path (sqlite:///<file>)")
        engine = create_async_engine(target, json_serializer=serializer)
        sa.event.listen(engine.sync_engine, "connect", _sqlite_settings(busy_timeout_ms))
        return engine
    return create_async_engine(target, json_serializer=serializer, pool_size=pool_size, max_overflow=pool_size,
                               pool_pre_ping=True, connect_args={"timeout": CONNECT_TIMEOUT_S})


class Store:
    """The database: call records today, campaigns and do-not-call lists in the same schema later.
    ``await Store.open(url)`` connects and upgrades the schema to the newest revision."""

    def __init__(self, engine: AsyncEngine, url: str) -> None:
        self.engine = engine
        self.url = url
        self.safe_url = mask_url(url)
        self._upsert_calls = calls_table.upsert_statement(engine.dialect.name)

    @classmethod
    async def open(cls, url: str, *, migrate: bool = True, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> "Store":
        engine = create_engine(url, busy_timeout_ms=busy_timeout_ms)
        store = cls(engine, url)
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

    async def close(self) -> None:
        await self.engine.dispose()

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
                         cursor: str | None = None) -> tuple[list[CallSummary], str | None]:
        """Newest first; ``next_cursor`` continues after the last one (None on the last page)."""
        async with self.engine.connect() as conn:
            return await calls_table.page(conn, persona=persona, since=since, until=until, outcome=outcome,
                                          limit=limit, cursor=cursor)
