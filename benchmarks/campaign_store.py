"""What the database costs a campaign per attempt: the store's calls one dial goes through, on SQLite and on a
throwaway PostgreSQL server.

Run:  .venv/bin/python benchmarks/campaign_store.py [--attempts 500] [--batch 10] [--no-postgres]

One campaign of ``--attempts`` contacts; claims of ``--batch`` contacts at a time (the dialer's tick), and for
each attempt what the dialer and the carrier's callbacks do: ``mark_dialing``, ``mark_dialed``, three
``attempt_progress`` (ringing, answered, completed), ``finish_attempt``. One after the other on one event
loop (so the figure is the database's latency per attempt, not its throughput under concurrency). Figures:
wall time per attempt (all six updates plus its share of one claim), this process's CPU time per attempt
(``time.process_time``: the event loop's thread and, on SQLite, the worker threads running the transactions),
and the claim alone per claim.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import structlog

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from voicebot.store import Store  # noqa: E402


@dataclass(frozen=True)
class Spec:
    name: str = "bench"
    carrier: str = "twilio"
    from_numbers: tuple[str, ...] = ("+15550002000", "+15550002001")
    max_concurrent_calls: int = 500
    calls_per_second: float = 1e6        # the rate is not what is measured here

    def to_json(self) -> dict:
        return {"name": self.name}


@dataclass(frozen=True)
class Contact:
    row: int
    phone: str
    timezone: str
    variables: dict


def always(tz: str, at: datetime) -> datetime:
    return at


def no_retry(outcome: str, earlier: int) -> timedelta | None:
    return None


async def run(url: str, attempts: int, batch: int) -> tuple[float, float, float]:
    store = await Store.open(url)
    try:
        contacts = [Contact(i + 2, f"+1555{i:07d}", "America/New_York", {"first_name": f"N{i}"})
                    for i in range(attempts)]
        now = datetime.now(timezone.utc)
        campaign_id = await store.create_campaign(Spec(), contacts, now=now)
        await store.set_campaign_state("bench", "running", now=now)
        claim_s = 0.0
        claims = 0
        started = time.perf_counter()
        cpu_started = time.process_time()
        done = 0
        while done < attempts:
            t = time.perf_counter()
            claimed = await store.claim(campaign_id, now=datetime.now(timezone.utc), limit=batch, due=always)
            claim_s += time.perf_counter() - t
            claims += 1
            for c in claimed:
                now = datetime.now(timezone.utc)
                call = f"CA{c.attempt_id}"
                await store.mark_dialing(c.attempt_id, now=now)
                await store.mark_dialed(c.attempt_id, call, now=now)
                for seq, status in enumerate(("ringing", "answered", "completed")):
                    await store.attempt_progress(c.attempt_id, carrier_call_id=call, status=status, now=now,
                                                 sequence=seq)
                await store.finish_attempt(c.attempt_id, outcome="answered", now=now, retry_after=no_retry,
                                           due=always)
            done += len(claimed)
        total = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        return total / attempts * 1000, cpu / attempts * 1000, claim_s / claims * 1000
    finally:
        await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attempts", type=int, default=500)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory() as folder:
        urls = {"SQLite": f"sqlite:///{folder}/bench.db"}
        server = None
        if not args.no_postgres:
            from pg_server import PostgresServer
            server = PostgresServer()
            server.start()
            urls["PostgreSQL"] = await server.create_database("bench")
        try:
            for name, url in urls.items():
                per_attempt, cpu, per_claim = await run(url, args.attempts, args.batch)
                print(f"{name:10s} {per_attempt:6.2f} ms per attempt (its share of a claim + 6 updates), "
                      f"CPU {cpu:5.2f} ms; a claim of {args.batch}: {per_claim:6.2f} ms")
        finally:
            if server is not None:
                server.stop()


if __name__ == "__main__":
    asyncio.run(main())
