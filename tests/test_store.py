"""The database layer on real databases: a SQLite file and a throwaway PostgreSQL server. Schema migrations,
call records round-tripping, filters and keyset pages, servers starting together, and the record writer: never
in the call's way, retrying, spooling what the database cannot take and writing it on the next start."""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import json
import os
import sqlite3
import time
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
import structlog
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from voicebot.config import ConfigError, load_settings
from voicebot.store import (MAX_PAGE, CallRecord, InvalidCursor, RecordWriter, Store, StoreError,
                            default_spool_path, mask_url)
from voicebot.store.migrate import MIGRATION_LOCK_ID, current_revision, head_revision, sqlite_lock_path
from voicebot.store.schema import metadata

from conftest import until
from databases import database_url, pg_url, postgres, sqlite_url, store  # noqa: F401 (fixtures)
from records import PERSONAS, T0, full_record


def schema_differences(connection: sa.Connection) -> list:
    return compare_metadata(MigrationContext.configure(connection), metadata)


def sqlite_file(url: str) -> str:
    return url.split(":///", 1)[1]


class SqliteWriteLock:
    """Another process's write transaction on the SQLite file: every other writer waits, then fails."""

    def __init__(self, url: str) -> None:
        self.conn = sqlite3.connect(sqlite_file(url), isolation_level=None)

    def __enter__(self):
        self.conn.execute("BEGIN EXCLUSIVE")
        return self

    def release(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def __exit__(self, *exc) -> None:
        self.release()
        self.conn.close()


def rows_in_sqlite(url: str) -> dict[str, str]:
    with sqlite3.connect(sqlite_file(url)) as conn:
        return dict(conn.execute("SELECT id, outcome FROM calls").fetchall())


# -- schema and connection settings ----------------------------------------------------------------------------

async def test_sqlite_file_is_created_in_wal_mode_with_the_schema_at_head(sqlite_url):
    store = await Store.open(sqlite_url)
    try:
        assert await current_revision(store.engine) == head_revision() == "0003"
        async with store.engine.connect() as conn:
            assert await conn.run_sync(schema_differences) == []     # the migrations build exactly schema.py
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
            assert (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar() == 5000
    finally:
        await store.close()
    with sqlite3.connect(sqlite_file(sqlite_url)) as conn:     # WAL is a property of the file, seen by anyone
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(calls)")}
    assert {"ix_calls_started_at_id", "ix_calls_persona_started_at", "ix_calls_outcome_started_at"} <= indexes
    again = await Store.open(sqlite_url)        # a second start: nothing to upgrade, nothing lost
    await again.close()


async def test_postgresql_migrations_create_jsonb_and_timestamptz_columns(pg_url):
    store = await Store.open(pg_url)
    try:
        assert await current_revision(store.engine) == head_revision() == "0003"
        async with store.engine.connect() as conn:
            assert await conn.run_sync(schema_differences) == []
            types = dict((await conn.execute(sa.text(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'calls'"))).all())
    finally:
        await store.close()
    assert types["transcript"] == types["tools"] == types["engines"] == "jsonb"
    assert types["started_at"] == "timestamp with time zone"
    assert types["campaign_id"] == types["attempt_id"] == "character varying"


# -- records ---------------------------------------------------------------------------------------------------

async def test_a_record_round_trips_with_every_field(store):
    record = full_record(7)
    assert all(getattr(record, f.name) not in (None, [], 0) for f in dataclasses.fields(record)
               if f.name not in ("outcome_detail", "transfer_target", "campaign_id", "attempt_id"))
    await store.save_call(record)
    loaded = await store.get_call(record.id)
    assert loaded == record
    assert loaded.started_at.tzinfo is not None and loaded.started_at.utcoffset() == timedelta(0)
    assert loaded.transcript[1]["text"] == "我想查一下订单 A-1093"
    assert CallRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    assert await store.get_call("0" * 16) is None


async def test_saving_a_record_again_replaces_it(store):
    started = full_record(1, outcome=None, ended_at=None, duration_s=None, transcript=[], end_reason=None)
    await store.save_call(started)                   # at call start
    ended = full_record(1)
    await store.save_call(ended)                     # at call end
    assert await store.get_call(ended.id) == ended
    records, _ = await store.list_calls()
    assert [r.id for r in records] == [ended.id]


async def test_datetimes_are_kept_as_utc_whatever_zone_they_came_in(store):
    from zoneinfo import ZoneInfo

    local = T0.astimezone(ZoneInfo("Asia/Shanghai"))
    record = full_record(3, started_at=local)
    assert record.started_at == T0 and record.started_at.tzinfo is T0.tzinfo
    await store.save_call(record)
    assert (await store.get_call(record.id)).started_at == T0


@pytest.mark.parametrize("changes, problem", [
    ({"outcome": "hung_up"}, "outcome must be one of completed, caller_hung_up"),
    ({"direction": "sideways"}, "direction must be one of inbound, outbound"),
    ({"started_at": T0.replace(tzinfo=None)}, "started_at must be a timezone-aware datetime"),
    ({"ended_at": "2025-03-14T09:27:35"}, "ended_at must be a timezone-aware datetime"),
    ({"user_turns": -1}, "user_turns must be a whole number"),
    ({"id": ""}, "id must be a string of 1 to 64 characters"),
    ({"transcript": ["hello"]}, "transcript must be a list of mappings"),
    ({"engines": "realtime"}, "engines must be a list of engine names"),
])
def test_a_malformed_record_is_refused_naming_the_field(changes, problem):
    with pytest.raises(ValueError, match=problem):
        full_record(2, **changes)


def test_a_record_with_an_unknown_field_is_refused():
    data = full_record(2).to_dict()
    data["colour"] = "blue"
    with pytest.raises(ValueError, match="unknown field 'colour'"):
        CallRecord.from_dict(data)


# -- lists: filters and keyset pages ---------------------------------------------------------------------------

async def all_pages(store: Store, limit: int, **filters) -> list[str]:
    ids, cursor = [], None
    while True:
        page, cursor = await store.list_calls(limit=limit, cursor=cursor, **filters)
        assert len(page) <= limit
        ids += [r.id for r in page]
        if cursor is None:
            return ids


async def test_pages_cover_every_call_newest_first_once_with_filters(store):
    records = [full_record(n) for n in range(1, 161)]
    # Calls that started in the same microsecond: the id orders them, and no page boundary loses one.
    same = T0 + timedelta(seconds=500)
    records += [full_record(n, started_at=same) for n in range(161, 181)]
    await store.save_calls(records)
    newest_first = sorted(records, key=lambda r: (r.started_at, r.id), reverse=True)

    assert await all_pages(store, 7) == [r.id for r in newest_first]
    for persona in PERSONAS:
        assert await all_pages(store, 11, persona=persona) == [r.id for r in newest_first if r.persona == persona]
    since, until = T0 + timedelta(seconds=40), T0 + timedelta(seconds=120)
    expected = [r.id for r in newest_first if r.outcome == "transferred" and r.persona == "acme-en"
                and since <= r.started_at < until]
    assert expected and await all_pages(store, 2, outcome="transferred", persona="acme-en", since=since,
                                        until=until) == expected
    page, cursor = await store.list_calls(limit=10_000)
    assert len(page) == len(records) and cursor is None         # capped at MAX_PAGE, here 180 < 500
    assert MAX_PAGE == 500


async def test_calls_added_while_paging_neither_repeat_nor_shift_the_pages(store):
    await store.save_calls([full_record(n) for n in range(1, 51)])
    first, cursor = await store.list_calls(limit=20)
    await store.save_calls([full_record(n) for n in range(51, 71)])   # newer calls arrive meanwhile
    rest = []
    while cursor:
        page, cursor = await store.list_calls(limit=20, cursor=cursor)
        rest += page
    assert [r.id for r in first + rest] == [f"{n:016x}" for n in range(50, 0, -1)]


async def test_a_page_larger_than_the_cap_is_cut_to_it(sqlite_url):
    store = await Store.open(sqlite_url)
    try:
        await store.save_calls([full_record(n) for n in range(MAX_PAGE + 20)])
        page, cursor = await store.list_calls(limit=MAX_PAGE + 100)
        assert len(page) == MAX_PAGE and cursor is not None
        rest, cursor = await store.list_calls(limit=MAX_PAGE, cursor=cursor)
        assert len(rest) == 20 and cursor is None
    finally:
        await store.close()


async def test_bad_list_arguments_are_refused(store):
    with pytest.raises(InvalidCursor):
        await store.list_calls(cursor="not-a-cursor")
    with pytest.raises(InvalidCursor):
        await store.list_calls(cursor="WyIyMDI1LTAzLTE0IiwgMV0")     # base64 JSON, but not ours
    with pytest.raises(ValueError, match="limit must be a whole number"):
        await store.list_calls(limit=0)
    with pytest.raises(ValueError, match="outcome must be one of"):
        await store.list_calls(outcome="hung_up")
    with pytest.raises(ValueError, match="since must be a timezone-aware"):
        await store.list_calls(since=T0.replace(tzinfo=None))


# -- servers starting together --------------------------------------------------------------------------------

async def test_two_servers_starting_together_on_one_postgresql_both_come_up_and_share_records(pg_url):
    # (Without the upgrade lock the two upgrades block each other inside PostgreSQL: hence the time limit.)
    first, second = await asyncio.wait_for(asyncio.gather(Store.open(pg_url), Store.open(pg_url)), 30)
    writers = [RecordWriter(first, Path(os.devnull)), RecordWriter(second, Path(os.devnull))]
    try:
        for writer in writers:
            await writer.start()
        for n in range(40):
            writers[n % 2].put(full_record(n))
        for writer in writers:
            await writer.idle()
        assert [w.written for w in writers] == [20, 20]
        for store in (first, second):       # each lists the other's calls
            assert sorted(await all_pages(store, 15)) == [f"{n:016x}" for n in range(40)]
    finally:
        for writer in writers:
            await writer.close()
        await first.close()
        await second.close()


async def test_a_server_waits_for_another_ones_schema_upgrade_on_postgresql(postgres, pg_url):
    """While one server holds the upgrade lock, two more starting wait for it instead of failing."""
    import asyncpg

    holder = await asyncpg.connect(pg_url)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
        opening = [asyncio.create_task(Store.open(pg_url)) for _ in range(2)]

        async def blocked() -> int:
            return await holder.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")

        async def both_waiting() -> bool:
            return await blocked() >= 2
        await until(both_waiting, timeout=10, what="both servers waiting for the upgrade lock")
        assert not any(task.done() for task in opening)
        await holder.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
        stores = await asyncio.wait_for(asyncio.gather(*opening), 10)
        for store in stores:
            assert await current_revision(store.engine) == head_revision() == "0003"
            await store.close()
    finally:
        await holder.close()


async def test_two_servers_starting_together_on_one_sqlite_file_both_come_up(sqlite_url):
    lock = os.open(sqlite_lock_path(sqlite_file(sqlite_url)), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)            # a third server is upgrading
        opening = [asyncio.create_task(Store.open(sqlite_url)) for _ in range(2)]
        await until(lambda: flock_waiters(lock) == 2, timeout=10, what="both servers waiting for the upgrade lock")
        assert not Path(sqlite_file(sqlite_url)).exists()     # nobody touched the database before the lock
        fcntl.flock(lock, fcntl.LOCK_UN)
        stores = await asyncio.wait_for(asyncio.gather(*opening), 10)
    finally:
        os.close(lock)
    for store in stores:
        assert await current_revision(store.engine) == head_revision() == "0003"
    await stores[0].save_call(full_record(1))
    assert (await stores[1].get_call(full_record(1).id)) == full_record(1)
    for store in stores:
        await store.close()


def flock_waiters(fd: int) -> int:
    """How many lock requests wait on this open file (the kernel's /proc/locks marks them with "->")."""
    st = os.fstat(fd)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with open("/proc/locks") as locks:
        return sum(1 for line in locks if "->" in line and line.split()[6 if "->" in line else 5] == inode)


# -- opening errors and secrets --------------------------------------------------------------------------------

async def test_a_wrong_postgresql_password_fails_clearly_without_showing_it(postgres, pg_url):
    wrong = pg_url.replace(postgres.password, "not-the-password-93f1")
    with structlog.testing.capture_logs() as logs:
        with pytest.raises(StoreError) as caught:
            await Store.open(wrong)
    message = str(caught.value)
    assert "cannot open the database postgresql://voicebot:***@127.0.0.1" in message
    assert "password authentication failed" in message
    assert "not-the-password-93f1" not in message and "not-the-password-93f1" not in repr(logs)


async def test_an_unreachable_postgresql_fails_within_the_connect_timeout(postgres):
    from pg_server import free_port

    started = time.monotonic()
    with pytest.raises(StoreError, match=r"cannot open the database postgresql://voicebot:\*\*\*@127.0.0.1"):
        await Store.open(f"postgresql://voicebot:pw@127.0.0.1:{free_port()}/nowhere")
    assert time.monotonic() - started < 6


def test_mask_url_hides_the_password_only():
    assert mask_url("postgresql://bot:s3cr3t@db.example.com:5432/voicebot") == \
        "postgresql://bot:***@db.example.com:5432/voicebot"
    assert mask_url("sqlite:////var/lib/voicebot/voicebot.db") == "sqlite:////var/lib/voicebot/voicebot.db"


# -- config ----------------------------------------------------------------------------------------------------

def test_config_resolves_a_relative_sqlite_path_against_the_config_folder(tmp_path):
    folder = tmp_path / "etc"
    folder.mkdir()
    config = folder / "config.yaml"
    config.write_text("database: {url: 'sqlite:///data/calls.db'}\nrecordings_dir: rec\n")
    settings = load_settings(config, environ={})
    assert settings.database_url == f"sqlite:///{folder.absolute() / 'data' / 'calls.db'}"
    assert settings.recordings_dir == folder / "rec"
    assert default_spool_path(settings.database_url, folder) == folder.absolute() / "data" / "calls.db.spool.jsonl"
    config.write_text("")
    defaults = load_settings(config, environ={})
    assert defaults.database_url == f"sqlite:///{folder.absolute() / 'voicebot.db'}"
    assert defaults.recordings_dir == folder / "recordings" and defaults.database_spool is None


def test_config_takes_postgresql_and_a_spool_path(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("database:\n  url: postgresql://bot:pw@db.example.com:5432/voicebot\n  spool: spool.jsonl\n")
    settings = load_settings(config, environ={})
    assert settings.database_url == "postgresql://bot:pw@db.example.com:5432/voicebot"
    assert settings.database_spool == tmp_path / "spool.jsonl"
    assert default_spool_path(settings.database_url, tmp_path) == tmp_path / "voicebot-records.spool.jsonl"


def test_the_environment_gives_the_database_url_with_its_password(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("database: {url: 'postgresql://bot@db.example.com/voicebot'}\n")
    url = "postgresql://bot:s3cr3t@db.example.com:6432/voicebot"
    assert load_settings(config, environ={"VOICEBOT_DATABASE_URL": url}).database_url == url
    assert load_settings(config, environ={}).database_url == "postgresql://bot@db.example.com/voicebot"
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ={"VOICEBOT_DATABASE_URL": "postgres://bot:s3cr3t@db/voicebot"})
    assert str(caught.value).startswith("environment: VOICEBOT_DATABASE_URL: expected sqlite:///<file> or "
                                        "postgresql://") and "s3cr3t" not in str(caught.value)


@pytest.mark.parametrize("url, problem", [
    ("mysql://bot:hunter2@db/voicebot", "got a mysql:// URL"),
    ("voicebot.db", "got a value without a scheme URL"),
    ("sqlite://", "expected sqlite:///<file>"),
    ("sqlite:///:memory:", "expected sqlite:///<file>"),
    ("postgresql://bot:hunter2@/voicebot", "needs a host, a port up to 65535 if any, and a database"),
    ("postgresql://bot:hunter2@db.example.com", "needs a host, a port up to 65535 if any, and a database"),
])
def test_config_refuses_other_database_urls_naming_the_field_not_the_password(tmp_path, url, problem):
    config = tmp_path / "config.yaml"
    config.write_text(f"database: {{url: '{url}'}}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ={})
    assert f"{config}: database.url: " in str(caught.value) and problem in str(caught.value)
    assert "hunter2" not in str(caught.value)


# -- the record writer -----------------------------------------------------------------------------------------

async def test_put_never_waits_while_the_database_is_locked_and_the_records_arrive_later(sqlite_url, tmp_path):
    store = await Store.open(sqlite_url, busy_timeout_ms=1000)
    writer = RecordWriter(store, tmp_path / "spool.jsonl", retry_initial_s=0.05, retry_max_s=0.2)
    await writer.start()
    lags: list[float] = []

    async def ticker():         # what a call's 20 ms frame loop would see
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + 0.005
            await asyncio.sleep(0.005)
            lags.append(loop.time() - due)

    ticking = asyncio.create_task(ticker())
    try:
        with SqliteWriteLock(sqlite_url) as lock:
            put_times = []
            for n in range(200):
                started = time.perf_counter()
                writer.put(full_record(n))
                put_times.append(time.perf_counter() - started)
            await until(lambda: writer.failed >= 2, timeout=10, what="two failed writes")   # each waited busy_timeout (1 s)
            assert writer.written == 0 and writer.stats()["pending"] == 200
            lock.release()
            await asyncio.wait_for(writer.idle(), 10)
    finally:
        ticking.cancel()
        await writer.close()
        await store.close()
    assert writer.written == 200 and writer.spooled == 0
    assert len(rows_in_sqlite(sqlite_url)) == 200
    # A put() that waited for the database would take its busy timeout (1 s) each: 200 s in all.
    assert sorted(put_times)[100] < 1e-4 and sum(put_times) < 0.5, \
        f"put(): median {sorted(put_times)[100] * 1e6:.0f} µs, total {sum(put_times) * 1e3:.0f} ms"
    # Each failed write waited a whole second on the lock; none of it held up the event loop.
    assert max(lags) < 0.5, f"event loop held up {max(lags) * 1e3:.0f} ms"


async def test_records_the_database_cannot_take_at_shutdown_are_spooled_and_written_on_the_next_start(
        sqlite_url, tmp_path):
    spool = tmp_path / "spool.jsonl"
    store = await Store.open(sqlite_url, busy_timeout_ms=50)
    writer = RecordWriter(store, spool, retry_initial_s=0.05, drain_timeout_s=0.5)
    await writer.start()
    records = [full_record(n) for n in range(30)]
    with SqliteWriteLock(sqlite_url):
        for record in records:
            writer.put(record)
        started = time.monotonic()
        with structlog.testing.capture_logs() as logs:
            await writer.close()
        closing_s = time.monotonic() - started
        await store.close()
    assert closing_s < 2.0, f"close() took {closing_s:.1f} s"       # bounded: drain_timeout_s, then spool
    assert writer.spooled == 30 and writer.written == 0 and writer.failed >= 1
    assert rows_in_sqlite(sqlite_url) == {}
    spooled = [CallRecord.from_dict(json.loads(line)) for line in spool.read_text().splitlines()]
    assert spooled == records
    failures = [e for e in logs if e["event"] == "record_write_failed"]
    assert failures and failures[0]["error"] == "OperationalError: database is locked"
    assert failures[0]["url"] == sqlite_url             # which database; never the records' contents

    store = await Store.open(sqlite_url)
    writer = RecordWriter(store, spool)
    try:
        await writer.start()                     # the next server start
        assert writer.written == 30
        assert [await store.get_call(r.id) for r in records] == records
        assert spool.read_text() == ""
    finally:
        await writer.close()
        await store.close()


async def test_postgresql_refusing_connections_spools_and_the_next_start_writes_them(postgres, pg_url, tmp_path):
    import asyncpg

    database = pg_url.rsplit("/", 1)[1]
    spool = tmp_path / "spool.jsonl"
    store = await Store.open(pg_url)
    writer = RecordWriter(store, spool, retry_initial_s=0.05, drain_timeout_s=0.5)
    await writer.start()
    writer.put(full_record(1))
    await writer.idle()
    admin = await asyncpg.connect(postgres.url("postgres"))
    try:                                         # the database goes away: no connections, existing ones cut
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", database)
        for n in range(2, 12):
            writer.put(full_record(n))
        await until(lambda: writer.failed >= 1, timeout=10, what="a failed write")
        await writer.close()
        await store.close()
        assert writer.written == 1 and writer.spooled == 10
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
    finally:
        await admin.close()
    store = await Store.open(pg_url)
    writer = RecordWriter(store, spool)
    try:
        await writer.start()
        ids = sorted(await all_pages(store, 50))
        assert ids == [f"{n:016x}" for n in range(1, 12)] and writer.written == 10
    finally:
        await writer.close()
        await store.close()


async def test_a_spool_cut_short_by_a_crash_keeps_its_good_records_and_the_broken_line(sqlite_url, tmp_path):
    spool = tmp_path / "spool.jsonl"
    good = [full_record(n) for n in range(3)]
    lines = [json.dumps(r.to_dict()) for r in good]
    spool.write_text("\n".join(lines) + "\n" + lines[0][:57])      # the last append never finished
    store = await Store.open(sqlite_url)
    writer = RecordWriter(store, spool)
    try:
        await writer.start()
        assert writer.written == 3 and writer.rejected == 1
        assert [await store.get_call(r.id) for r in good] == good
    finally:
        await writer.close()
        await store.close()
    kept = [json.loads(line) for line in writer.rejected_path.read_text().splitlines()]
    assert kept == [{"error": kept[0]["error"], "record": lines[0][:57]}] and "spool line 4" in kept[0]["error"]


async def test_a_record_the_database_refuses_is_kept_aside_and_the_others_are_written(sqlite_url, tmp_path):
    store = await Store.open(sqlite_url)
    writer = RecordWriter(store, tmp_path / "spool.jsonl")
    await writer.start()
    bad = full_record(5, tools=[{"name": "lookup", "result": {1, 2, 3}}])     # a set is not JSON
    try:
        for record in (full_record(4), bad, full_record(6)):
            writer.put(record)
        await asyncio.wait_for(writer.idle(), 10)
        assert sorted(rows_in_sqlite(sqlite_url)) == [full_record(4).id, full_record(6).id]
        writer.put(full_record(7))               # the writer goes on
        await asyncio.wait_for(writer.idle(), 10)
        assert writer.written == 3 and writer.rejected == 1
    finally:
        await writer.close()
        await store.close()
    kept = json.loads(writer.rejected_path.read_text())
    assert kept["record"]["id"] == bad.id and "not JSON serializable" in kept["error"]


async def test_a_long_outage_moves_the_queue_to_the_spool_in_order(sqlite_url, tmp_path):
    """Past max_pending, waiting records go to the spool; the latest save of a call still wins."""
    spool = tmp_path / "spool.jsonl"
    store = await Store.open(sqlite_url, busy_timeout_ms=20)
    writer = RecordWriter(store, spool, max_pending=10, retry_initial_s=0.02, retry_max_s=0.05)
    await writer.start()
    try:
        with SqliteWriteLock(sqlite_url) as lock:
            writer.put(full_record(0, outcome=None))            # saved at call start …
            for n in range(1, 15):
                writer.put(full_record(n))
            await until(lambda: writer.spooled >= 15, timeout=10, what="the queue spilled to the spool")
            writer.put(full_record(0))                           # … and at its end, after the spill
            lock.release()
            await asyncio.wait_for(writer.idle(), 10)
        assert rows_in_sqlite(sqlite_url)[full_record(0).id] == full_record(0).outcome
        assert len(rows_in_sqlite(sqlite_url)) == 15 and spool.read_text() == ""
    finally:
        await writer.close()
        await store.close()


async def test_a_record_put_after_close_goes_to_the_spool(sqlite_url, tmp_path):
    store = await Store.open(sqlite_url)
    writer = RecordWriter(store, tmp_path / "spool.jsonl")
    await writer.start()
    await writer.close()
    writer.put(full_record(9))
    await store.close()
    assert writer.spooled == 1
    assert CallRecord.from_dict(json.loads(writer.spool_path.read_text())) == full_record(9)
