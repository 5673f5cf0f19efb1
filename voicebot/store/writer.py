"""The record writer: calls hand over their records without waiting; one task writes them to the database.

A call's path never touches the database (design invariant 8). ``put()`` appends to an in-memory queue and
returns. The writer task saves the queue in batches; a failed write is retried with growing pauses, so a slow or
unavailable database only makes records arrive later. On ``close()`` the queue gets a bounded time to drain;
whatever is still unwritten then is appended to the spool file (JSON lines), which ``start()`` writes to the
database next time. Several server processes may share one spool file: it is locked while it is appended to or
replayed. A record the database refuses as such (not for being unavailable) is kept in ``<spool>.rejected``."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
from collections import deque
from collections.abc import Iterable, Sequence
from pathlib import Path

import structlog
from sqlalchemy import exc as sa_exc

from .calls import CallRecord
from .database import Store, describe_error

log = structlog.get_logger("voicebot.store")


def default_spool_path(database_url: str, folder: Path) -> Path:
    """Beside a SQLite file; in ``folder`` (the config file's) for a database on another machine."""
    if database_url.startswith("sqlite"):
        return Path(database_url.split(":///", 1)[1].split("?", 1)[0] + ".spool.jsonl")
    return Path(folder) / "voicebot-records.spool.jsonl"


def _refused(exc: BaseException) -> bool:
    """The database refused these records (they would fail again), as opposed to being unreachable or busy."""
    if isinstance(exc, (sa_exc.IntegrityError, sa_exc.DataError, TypeError, ValueError)):
        return True
    # Raised before reaching the database, e.g. a value that does not serialise to JSON.
    return isinstance(exc, sa_exc.StatementError) and not isinstance(exc, sa_exc.DBAPIError)


class RecordWriter:
    def __init__(self, store: Store, spool_path: Path, *, batch_size: int = 100, max_pending: int = 10_000,
                 retry_initial_s: float = 0.5, retry_max_s: float = 30.0, write_timeout_s: float = 10.0,
                 drain_timeout_s: float = 5.0) -> None:
        self.store = store
        self.spool_path = Path(spool_path)
        self.rejected_path = self.spool_path.with_name(self.spool_path.name + ".rejected")
        self.batch_size = batch_size
        self.max_pending = max_pending          # beyond this many unwritten records, they wait in the spool file
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.write_timeout_s = write_timeout_s
        self.drain_timeout_s = drain_timeout_s
        self.written = 0        # records saved
        self.failed = 0         # write attempts that failed (and were retried)
        self.spooled = 0        # records appended to the spool file
        self.rejected = 0       # records the database refused, kept in the rejected file
        self._pending: deque[CallRecord] = deque()
        self._in_flight: list[CallRecord] = []
        self._spool_waiting = False
        self._wake = asyncio.Event()            # a record was put (or closing began)
        self._closing_event = asyncio.Event()   # cuts a retry pause short: the drain time is short
        self._drained = asyncio.Event()
        self._drained.set()
        self._task: asyncio.Task | None = None
        self._closing = False
        self._closed = False

    # -- the call's side -----------------------------------------------------------------------------------
    def put(self, record: CallRecord) -> None:
        """Queue a record for writing. Never blocks, never waits: safe on any call path."""
        if self._closed:
            # A call that ended after shutdown: rare, and a small file append beats losing the record.
            log.warning("record_after_writer_closed", call_id=record.id, spool=str(self.spool_path))
            self._spool([record])
            return
        self._pending.append(record)
        self._drained.clear()
        self._wake.set()

    # -- lifecycle -----------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Write what an earlier run spooled, then start the writer task."""
        self._spool_waiting = self._spool_has_records()
        if self._spool_waiting:
            try:
                await self._replay_spool()
            except Exception as exc:      # the writer task retries it
                self._write_failed(exc, "spool replay", self.retry_initial_s)
        self._task = asyncio.create_task(self._run(), name="record-writer")

    async def idle(self) -> None:
        """Wait until every record put so far has been written (or spooled or rejected)."""
        await self._drained.wait()

    async def close(self) -> None:
        """Drain for at most ``drain_timeout_s``, then spool what is left. Nothing put is lost."""
        if self._closed:
            return
        self._closing = True
        self._closing_event.set()
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._drained.wait(), self.drain_timeout_s)
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._closed = True
        leftovers = [*self._in_flight, *self._pending]
        self._in_flight, self._pending = [], deque()
        if leftovers:
            await asyncio.to_thread(self._spool, leftovers)
        self._drained.set()
        log.info("record_writer_closed", written=self.written, failed=self.failed, spooled=self.spooled,
                 rejected=self.rejected, spool=str(self.spool_path) if self._spool_has_records() else None)

    def stats(self) -> dict[str, int]:
        return {"written": self.written, "failed": self.failed, "spooled": self.spooled, "rejected": self.rejected,
                "pending": len(self._pending) + len(self._in_flight)}

    # -- the writer task -----------------------------------------------------------------------------------
    async def _run(self) -> None:
        pause = self.retry_initial_s
        while True:
            if not self._pending and not self._spool_waiting:
                self._drained.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                if self._spool_waiting:     # older than anything queued: it goes first
                    await self._replay_spool()
                else:
                    self._in_flight = [self._pending.popleft()
                                       for _ in range(min(self.batch_size, len(self._pending)))]
                    await self._write(self._in_flight)
                    self._in_flight = []
                pause = self.retry_initial_s
            except Exception as exc:
                self._pending.extendleft(reversed(self._in_flight))
                self._in_flight = []
                self._write_failed(exc, "spool replay" if self._spool_waiting else "write", pause)
                if len(self._pending) > self.max_pending:
                    await self._spill()
                await self._pause(pause)
                pause = min(pause * 2, self.retry_max_s)

    def _write_failed(self, exc: Exception, what: str, retry_in_s: float) -> None:
        self.failed += 1
        log.error("record_write_failed", what=what, url=self.store.safe_url, error=describe_error(exc, self.store.url),
                  pending=len(self._pending), retry_in_s=retry_in_s)

    async def _pause(self, seconds: float) -> None:
        """Wait before retrying (new records do not hurry it); once closing, retry soon."""
        if self._closing:
            await asyncio.sleep(min(seconds, 0.2))
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._closing_event.wait(), seconds)

    async def _write(self, records: Sequence[CallRecord]) -> None:
        """Save records; raises if the database is unavailable. Records it refuses go to the rejected file."""
        try:
            await asyncio.wait_for(self.store.save_calls(records), self.write_timeout_s)
        except Exception as exc:
            if not _refused(exc):
                raise
            if len(records) > 1:        # find the one it refuses; the others are fine
                for record in records:
                    await self._write([record])
                return
            self._reject(records[0].id, describe_error(exc, self.store.url), records[0].to_dict())
            return
        self.written += len(records)

    async def _spill(self) -> None:
        """Too many records wait for the database: move them all (keeping their order) to the spool file."""
        records = list(self._pending)
        self._pending.clear()
        await asyncio.to_thread(self._spool, records)
        self._spool_waiting = True
        log.warning("records_spilled_to_spool", records=len(records), spool=str(self.spool_path))

    # -- the spool file ------------------------------------------------------------------------------------
    def _open_spool(self):
        """The spool file, opened for appending and reading, locked until it is closed."""
        self.spool_path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self.spool_path, "a+", encoding="utf-8")
        try:
            fcntl.flock(file, fcntl.LOCK_EX)
        except BaseException:
            file.close()
            raise
        return file

    def _spool_has_records(self) -> bool:
        try:
            return self.spool_path.stat().st_size > 0
        except FileNotFoundError:
            return False

    def _spool(self, records: Iterable[CallRecord]) -> None:
        lines, count = [], 0
        for record in records:
            try:
                lines.append(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
                count += 1
            except (TypeError, ValueError) as exc:
                self._reject(record.id, f"not JSON: {exc}", repr(record))
        try:
            with self._open_spool() as file:
                file.writelines(lines)
                file.flush()
                os.fsync(file.fileno())
        except OSError as exc:
            # Both the database and the spool's disk failed: the log is the last place left to keep them.
            log.critical("records_lost_unless_recovered_from_this_log", spool=str(self.spool_path), error=str(exc),
                         records=[line.rstrip("\n") for line in lines])
            return
        self.spooled += count
        log.warning("records_spooled", records=count, spool=str(self.spool_path))

    async def _replay_spool(self) -> None:
        """Write the spool file's records, then empty it. Raises (leaving the file as it is) if the database is
        unavailable; writing a record twice is harmless (saving replaces)."""
        spool = await asyncio.to_thread(self._open_spool)
        try:
            spool.seek(0)
            lines = spool.read().splitlines()
            records, broken = [], []
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    records.append(CallRecord.from_dict(json.loads(line)))
                except (ValueError, TypeError) as exc:   # e.g. the last line of a crash mid-append
                    broken.append((f"spool line {number}: {exc}", line))
            for start in range(0, len(records), self.batch_size):
                await self._write(records[start:start + self.batch_size])
            for error, line in broken:        # kept aside once the rest is safe (a failed replay is retried)
                self._reject(None, error, line)
            spool.truncate(0)
            spool.flush()
            os.fsync(spool.fileno())
        finally:
            spool.close()
        self._spool_waiting = False
        if records:
            log.info("spool_replayed", records=len(records), spool=str(self.spool_path))

    def _reject(self, call_id: str | None, error: str, record) -> None:
        self.rejected += 1
        log.error("record_rejected", call_id=call_id, error=error, kept_in=str(self.rejected_path))
        entry = {"error": error, "record": record}
        with open(self.rejected_path, "a", encoding="utf-8") as file:
            file.write(json.dumps(entry, ensure_ascii=False, default=repr) + "\n")
