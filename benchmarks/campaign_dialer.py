"""The campaign dialer under load: a large campaign dialled through the fake Twilio REST API, on SQLite and on a
throwaway PostgreSQL server, with the dial rate and the live calls measured at the carrier.

Run (from the repository root; ~4 min per database at the defaults):

    .venv/bin/python benchmarks/campaign_dialer.py [--contacts 10000] [--rate 50] [--concurrency 500]
                                                   [--database sqlite|postgresql|both] [--quick]

Method. The fake carrier (``FakeTwilioApi``) runs in a child process with its own event loop, so its CPU is not
the dialer's. The dialer side is this process: the real server app (``voicebot.server.create_app``: the campaign
service and its dialer and reconciler, the status-callback routes, the database) on a loopback socket, logging
as ``voicebot serve`` does (JSON, level info; to /dev/null). The callees are ``ShortCall``s that never open the
media stream (the media path has its own load benchmark, ``benchmarks/load.py``): by default 80 % answer after a
0.5–2 s ring and talk 2–8 s, 10 % are busy, 10 % do not answer within the 5 s ring timeout; busy and no-answer
are retried once after 5 s. So 10 000 contacts make ~12 000 attempts; about 300 calls are live at once.

Figures:
* dial rate at the fake: dials per ``--window`` seconds (10 s), over the whole windows while fresh contacts were
  still waiting (from the first dial to the last first dial of a contact: the dialer always had someone to call);
  mean, min, max and the largest deviation of a window from the set rate;
* max live calls at the fake (``max_live_seen``: counted at each dial);
* the dialer process's CPU (``time.process_time``: its event loop and, on SQLite, the threads running the
  transactions) per attempt and as a share of one core over the campaign's run; the fake's and the PostgreSQL
  server's CPU are shown apart;
* database time per attempt: the wall time spent in ``Store`` calls made by the campaign service (its store is
  wrapped in :class:`TimedStore` for the run; concurrent calls each count their own wait);
* attempts per outcome (from the database), checked against the fake's record; the total time from start to
  the campaign being done.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import inspect
import math
import multiprocessing
import os
import random
import socket
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import sqlalchemy as sa  # noqa: E402
from aiohttp import web  # noqa: E402

from voicebot.api.common import DATABASE  # noqa: E402
from voicebot.config import Settings, StepFunSettings, TwilioSettings  # noqa: E402
from voicebot.dialplan import load_dialplan  # noqa: E402
from voicebot.logs import configure_logging  # noqa: E402
from voicebot.server import SERVICES, create_app, install_event_loop  # noqa: E402

from campaign_setup import ACCOUNT_SID, OUR_NUMBERS, create_and_start, reminder_persona, write_campaign, write_plans  # noqa: E402,E501

AUTH_TOKEN = "campaign-benchmark-auth-token"
CAMPAIGN = "bench-dialer"
AREA_CODES = ("212", "646", "718", "917", "347")      # 10 000 numbers each: +1 <area> 555 xxxx


@dataclass(frozen=True)
class Options:
    contacts: int = 10_000
    rate: float = 50.0
    concurrency: int = 500
    busy_share: float = 0.1
    no_answer_share: float = 0.1
    ring_s: tuple[float, float] = (0.5, 2.0)      # an answered call rings this long
    talk_s: tuple[float, float] = (2.0, 8.0)
    ring_timeout_s: int = 5
    retry_after_s: int = 5
    window_s: float = 10.0
    seed: int = 13


# -- the carrier, in its own process ------------------------------------------------------------------------------

def phone(i: int) -> str:
    return f"+1{AREA_CODES[i // 10_000]}555{i % 10_000:04d}"


def callees(options: Options) -> dict:
    """Who answers each contact's number (seeded): busy, no answer, or a short call."""
    from voicebot.simulator.carrier_api import Busy, NoAnswer, ShortCall

    pick = random.Random(options.seed)
    chosen = {}
    for i in range(options.contacts):
        u = pick.random()
        if u < options.busy_share:
            chosen[phone(i)] = Busy()
        elif u < options.busy_share + options.no_answer_share:
            chosen[phone(i)] = NoAnswer()
        else:
            chosen[phone(i)] = ShortCall(answer_after_s=pick.uniform(*options.ring_s),
                                         talk_s=pick.uniform(*options.talk_s))
    return chosen


def run_fake_carrier(conn, options: Options) -> None:
    """The child process: the fake Twilio API until told to stop; then what it recorded."""
    asyncio.run(_fake_carrier(conn, options))


async def _fake_carrier(conn, options: Options) -> None:
    import logging

    import structlog

    from voicebot.simulator.carrier_api import FakeTwilioApi

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    fake = FakeTwilioApi(ACCOUNT_SID, AUTH_TOKEN, owned_numbers=OUR_NUMBERS)
    fake.callees.update(callees(options))
    await fake.start()
    try:
        conn.send(fake.base_url)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, conn.recv)           # "stop"
        calls = sorted(fake.dialled.values(), key=lambda call: call.dialled_at)
        refused = [cb for call in calls for cb in call.callbacks if cb.status not in (200, 204)]
        conn.send({
            "dials": [(call.dialled_at, call.to, call.status) for call in calls],
            "max_live_seen": fake.max_live_seen,
            "live_at_end": len(fake.live_calls()),
            "callbacks": sum(len(call.callbacks) for call in calls),
            "callbacks_refused": [(cb.event, cb.status, cb.error) for cb in refused[:10]] + [len(refused)],
            "cpu_s": time.process_time(),
        })
    finally:
        await fake.close()


class FakeCarrier:
    """The fake carrier's child process, seen from here."""

    def __init__(self, options: Options) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=run_fake_carrier, args=(child, options), daemon=True)

    async def start(self) -> str:
        self._process.start()
        return await asyncio.to_thread(self._conn.recv)

    async def record(self) -> dict:
        self._conn.send("stop")
        record = await asyncio.to_thread(self._conn.recv)
        await asyncio.to_thread(self._process.join, 30)
        return record

    def kill(self) -> None:
        if self._process.is_alive():
            self._process.kill()


# -- the dialer side ------------------------------------------------------------------------------------------------

class TimedStore:
    """The store as the campaign service uses it, adding up the wall time of each call per method."""

    def __init__(self, store) -> None:
        self._store = store
        self.seconds: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str):
        value = getattr(self._store, name)
        if not inspect.iscoroutinefunction(value):
            return value

        async def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return await value(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - started
                self.calls[name] += 1
        return timed


def process_cpu_s(pids: list[int]) -> float:
    """utime + stime of these processes (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(fields[11]) + int(fields[12])
    return total / tick


def postgres_pids(postmaster: int) -> list[int]:
    """The PostgreSQL server: its postmaster and every process it started (backends, writers)."""
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                    pids.append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError, IndexError):
                pass
    return pids


@dataclass
class Report:
    database: str
    options: Options
    total_s: float
    attempts: int
    outcomes: dict[str, int]
    contact_states: dict[str, int]
    cpu_s: float
    loop_cpu_s: float                        # of which the event loop's thread
    store_seconds: dict[str, float]
    store_calls: dict[str, int]
    dial_times: list[float]                  # at the fake, seconds from the first dial
    steady: tuple[float, float]              # the stretch the rate is measured over, seconds from the first dial
    max_live_seen: int
    live_at_end: int
    fake_statuses: dict[str, int]
    callbacks: int
    callbacks_refused: list
    fake_cpu_s: float
    database_server_cpu_s: float | None = None
    loop: str = "asyncio"
    window_rates: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        w = self.options.window_s
        start, end = self.steady
        n = int((end - start) // w)
        counts = Counter(int((t - start) // w) for t in self.dial_times if start <= t < start + n * w)
        self.window_rates = [counts[k] / w for k in range(n)]

    @property
    def rate_deviation_pct(self) -> float:
        rate = self.options.rate
        return max((abs(r - rate) / rate * 100 for r in self.window_rates), default=math.nan)

    @property
    def store_s(self) -> float:
        return sum(self.store_seconds.values())

    def per_attempt_ms(self, seconds: float) -> float:
        return seconds / self.attempts * 1000 if self.attempts else math.nan


async def run_campaign(options: Options, database_url: str, workdir: Path, *, database: str = "sqlite",
                       postmaster: int | None = None, progress=None) -> Report:
    """One campaign of ``options.contacts`` dialled to the end against the fake carrier; what was measured."""
    carrier = FakeCarrier(options)
    try:
        base_url = await carrier.start()
        plans = write_plans(workdir, reminder_persona(directive="Confirm the appointment."))
        rows = [{"phone": phone(i), "first_name": f"Pat{i}", "appointment": "Monday at 9"}
                for i in range(options.contacts)]
        retry = (f"retry: {{busy: {{retries: 1, after: {options.retry_after_s}s}}, "
                 f"no-answer: {{retries: 1, after: {options.retry_after_s}s}}}}")
        path = write_campaign(workdir, CAMPAIGN, rows, concurrency=options.concurrency, rate=options.rate,
                              voicemail=None, retry=retry, ring_timeout=f"{options.ring_timeout_s}s")
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)
        port = sock.getsockname()[1]
        settings = Settings(
            source="benchmark", host="127.0.0.1", port=port, public_url=f"http://127.0.0.1:{port}",
            dialplans_dir=plans, transcripts_dir=workdir / "transcripts", recordings_dir=workdir / "recordings",
            database_url=database_url, stepfun=StepFunSettings(base_url="http://127.0.0.1:9", api_key="unused"),
            twilio=TwilioSettings(validate_signatures=True, auth_token=AUTH_TOKEN, account_sid=ACCOUNT_SID,
                                  api_base_url=base_url))
        app = create_app(settings, load_dialplan(plans))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.SockSite(runner, sock, backlog=1024).start()
        try:
            service = app[SERVICES].campaigns
            store = app[DATABASE].store
            timed = TimedStore(service.store)
            service.store = service.dialer.store = service.reconciler.store = timed
            campaign_id = await create_and_start(store, path, plans)    # not measured: creation, not dialing
            db_cpu = process_cpu_s(postgres_pids(postmaster)) if postmaster else None
            cpu0, loop_cpu0, t0 = time.process_time(), time.thread_time(), time.perf_counter()
            service.dialer.wake()
            # Done is the campaign's state in the database: the runner that set it is dropped by the dialer's
            # next look at the running campaigns, so waiting on the runner object could wait forever.
            while (await store.get_campaign(campaign_id)).state != "done":
                await asyncio.sleep(0.5)
                if progress is not None:
                    await progress(store, campaign_id, time.perf_counter() - t0)
            total_s = time.perf_counter() - t0
            cpu_s = time.process_time() - cpu0
            loop_cpu_s = time.thread_time() - loop_cpu0
            if postmaster:
                db_cpu = process_cpu_s(postgres_pids(postmaster)) - db_cpu
            async with store.engine.connect() as conn:
                outcomes = dict((await conn.execute(sa.text(
                    "SELECT outcome, count(*) FROM attempts WHERE campaign_id = :c GROUP BY outcome"),
                    {"c": campaign_id})).all())
                states = dict((await conn.execute(sa.text(
                    "SELECT state, count(*) FROM contacts WHERE campaign_id = :c GROUP BY state"),
                    {"c": campaign_id})).all())
        finally:
            await runner.cleanup()
        record = await carrier.record()
    finally:
        carrier.kill()
    dials = record["dials"]
    first = dials[0][0] if dials else 0.0
    first_dialled: dict[str, float] = {}
    for at, to, _status in dials:
        first_dialled.setdefault(to, at - first)
    return Report(
        database=database, options=options, total_s=total_s, attempts=sum(outcomes.values()),
        outcomes={str(k): v for k, v in outcomes.items()}, contact_states=states, cpu_s=cpu_s, loop_cpu_s=loop_cpu_s,
        store_seconds=dict(timed.seconds), store_calls=dict(timed.calls),
        dial_times=[at - first for at, _to, _status in dials],
        steady=(0.0, max(first_dialled.values(), default=0.0)), max_live_seen=record["max_live_seen"],
        live_at_end=record["live_at_end"], fake_statuses=dict(Counter(status for _a, _t, status in dials)),
        callbacks=record["callbacks"], callbacks_refused=record["callbacks_refused"], fake_cpu_s=record["cpu_s"],
        database_server_cpu_s=db_cpu, loop=asyncio.get_running_loop().__class__.__module__.split(".")[0])


class Progress:
    """The campaign's status on stderr every ``every_s`` while it runs."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s = every_s
        self.next_s = every_s

    async def __call__(self, store, campaign_id: str, elapsed_s: float) -> None:
        if elapsed_s < self.next_s:
            return
        self.next_s += self.every_s
        status = await store.campaign_status(campaign_id)
        shown = {k: v for k, v in status.items() if isinstance(v, int) and v}
        print(f"  {elapsed_s:5.0f} s {shown}", file=sys.stderr, flush=True)


# -- the report -------------------------------------------------------------------------------------------------------

def table(reports: list[Report]) -> str:
    def row(label: str, fmt) -> str:
        return f"{label:38s}" + "".join(f"{fmt(r):>22s}" for r in reports)

    def ms(seconds: float, r: Report) -> str:
        return f"{r.per_attempt_ms(seconds):.2f}"

    o = reports[0].options
    lines = [f"{o.contacts} contacts, {o.rate:g} calls/s, max {o.concurrency} concurrent; "
             f"{o.busy_share:.0%} busy, {o.no_answer_share:.0%} no answer ({o.ring_timeout_s} s ring timeout), "
             f"both retried once after {o.retry_after_s} s; answered calls ring {o.ring_s[0]:g}–{o.ring_s[1]:g} s, "
             f"talk {o.talk_s[0]:g}–{o.talk_s[1]:g} s; rate in {o.window_s:g} s windows",
             "", row("", lambda r: r.database), "-" * (38 + 22 * len(reports)),
             row("attempts (dials at the fake)", lambda r: f"{r.attempts} ({len(r.dial_times)})"),
             row("rate windows (steady stretch)", lambda r: f"{len(r.window_rates)} ({r.steady[1]:.0f} s)"),
             row("dials/s mean", lambda r: f"{sum(r.window_rates) / max(1, len(r.window_rates)):.2f}"),
             row("dials/s min / max", lambda r: f"{min(r.window_rates, default=math.nan):.1f} / "
                                                 f"{max(r.window_rates, default=math.nan):.1f}"),
             row("max deviation from the rate", lambda r: f"{r.rate_deviation_pct:.1f} %"),
             row("max live calls at the fake", lambda r: f"{r.max_live_seen} (≤ {r.options.concurrency})"),
             row("dialer CPU per attempt", lambda r: f"{ms(r.cpu_s, r)} ms"),
             row("  of which the event loop thread", lambda r: f"{ms(r.loop_cpu_s, r)} ms"),
             row("dialer CPU share (one core)", lambda r: f"{r.cpu_s / r.total_s * 100:.1f} %"),
             row("database time per attempt", lambda r: f"{ms(r.store_s, r)} ms"),
             row("database server CPU per attempt",
                 lambda r: "-" if r.database_server_cpu_s is None else f"{ms(r.database_server_cpu_s, r)} ms"),
             row("fake carrier CPU per attempt", lambda r: f"{ms(r.fake_cpu_s, r)} ms"),
             row("total time", lambda r: f"{r.total_s:.1f} s")]
    for outcome in sorted({k for r in reports for k in r.outcomes}):
        lines.append(row(f"attempts {outcome}", lambda r: str(r.outcomes.get(outcome, 0))))
    lines.append(row("contacts by state", lambda r: " ".join(f"{k} {v}" for k, v in sorted(r.contact_states.items()))))
    lines.append(row("callbacks refused (of sent)",
                     lambda r: f"{r.callbacks_refused[-1]} ({r.callbacks})"))
    lines += ["", "database time per attempt by Store method (ms; calls per attempt)"]
    for name in sorted({k for r in reports for k in r.store_seconds}, key=lambda k: -reports[0].store_seconds.get(k, 0)):
        lines.append(row(f"  {name}", lambda r: f"{ms(r.store_seconds.get(name, 0.0), r)} "
                                                f"({r.store_calls.get(name, 0) / r.attempts:.2f})"))
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=None, help="contacts in the campaign (default 10000)")
    parser.add_argument("--rate", type=float, default=50.0, help="calls_per_second")
    parser.add_argument("--concurrency", type=int, default=500, help="max_concurrent_calls")
    parser.add_argument("--database", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--quick", action="store_true", help="a smoke run of 1000 contacts")
    parser.add_argument("--verbose", action="store_true", help="progress on stderr every 10 s")
    parser.add_argument("--profile", metavar="FILE", help="cProfile the dialer's event loop thread into FILE")
    args = parser.parse_args()
    contacts = args.contacts or (1000 if args.quick else 10_000)
    if contacts > 10_000 * len(AREA_CODES):
        parser.error(f"--contacts: at most {10_000 * len(AREA_CODES)}")
    options = Options(contacts=contacts, rate=args.rate, concurrency=args.concurrency)
    devnull = open(os.devnull, "w")
    configure_logging("json", "info", stream=devnull)     # as `voicebot serve` logs, the lines thrown away
    reports = []
    for database in (("sqlite", "postgresql") if args.database == "both" else (args.database,)):
        with tempfile.TemporaryDirectory(prefix="campaign-bench-") as folder:
            workdir = Path(folder)
            server = None
            try:
                if database == "sqlite":
                    url, postmaster = f"sqlite:///{workdir / 'voicebot.db'}", None
                else:
                    from pg_server import PostgresServer
                    server = PostgresServer()
                    server.start()
                    url = await server.create_database("bench")
                    postmaster = int((server.folder / "data" / "postmaster.pid").read_text().split()[0])
                print(f"{database}: dialling {contacts} contacts …", file=sys.stderr, flush=True)
                profiler = None
                if args.profile:
                    import cProfile
                    profiler = cProfile.Profile()
                    profiler.enable()
                reports.append(await run_campaign(options, url, workdir, database=database, postmaster=postmaster,
                                                  progress=Progress() if sys.stderr.isatty() or args.verbose else None))
                if profiler is not None:
                    profiler.disable()
                    profiler.dump_stats(f"{args.profile}.{database}")
            finally:
                if server is not None:
                    server.stop()
    print(f"python {sys.version.split()[0]}, event loop {reports[0].loop}, {os.cpu_count()} cores (shared)")
    print(table(reports))


if __name__ == "__main__":
    install_event_loop()
    asyncio.run(main())
