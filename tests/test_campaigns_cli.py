"""``voicebot campaign …`` and ``voicebot dnc …`` on a real SQLite database named by a config file, without a
server: creation refused with row numbers, skipped rows reported, the state changes, status figures and exports
after attempts made through the store as the dialer makes them, the progress bar, the do-not-call list."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from voicebot.campaigns_cli import progress_bar, run, watch
from voicebot.cli import build_parser
from voicebot.store import Store

from campaign_files import CONTACTS_MISSING_NAMES, write_campaign, write_dialplan

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def config(tmp_path) -> Path:
    write_dialplan(tmp_path)
    path = tmp_path / "config.yaml"
    path.write_text("database: {url: 'sqlite:///data/voicebot.db'}\ndialplans: dialplans\n", encoding="utf-8")
    return path


def database_url(config: Path) -> str:
    return f"sqlite:///{config.parent / 'data' / 'voicebot.db'}"


async def voicebot(config: Path, *argv: str) -> tuple[int, str, str]:
    """Run ``voicebot campaign|dnc …`` in this process: (exit status, stdout, stderr)."""
    args = build_parser().parse_args([*argv, "--config", str(config)])
    out, err = io.StringIO(), io.StringIO()
    status = await run(args, out=out, err=err)
    return status, out.getvalue(), err.getvalue()


async def status_json(config: Path, name: str) -> dict:
    status, out, err = await voicebot(config, "campaign", "status", name, "--json")
    assert status == 0, err
    return json.loads(out)


# -- create ------------------------------------------------------------------------------------------------------

def test_a_contact_missing_a_variable_refuses_the_campaign_naming_every_such_row(config):
    """As a subprocess, through ``python -m voicebot.cli``: the message, the exit status, nothing stored."""
    definition = write_campaign(config.parent, contacts=CONTACTS_MISSING_NAMES)
    done = subprocess.run([sys.executable, "-m", "voicebot.cli", "campaign", "create", str(definition),
                           "--config", str(config)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 1, done
    assert done.stdout == ""
    assert "row 3" in done.stderr and "row 5" in done.stderr and "row 2" not in done.stderr
    assert "first_name" in done.stderr and "appointment" in done.stderr
    listed = subprocess.run([sys.executable, "-m", "voicebot.cli", "campaign", "status", "--json",
                             "--config", str(config)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert listed.returncode == 0 and json.loads(listed.stdout) == {"campaigns": []}


async def test_create_reports_the_skipped_rows_and_stores_the_good_ones(config):
    definition = write_campaign(config.parent)
    status, out, err = await voicebot(config, "campaign", "create", str(definition))
    assert status == 0, err
    assert "campaign dental-reminders created: 4 contact(s)" in out
    skipped = [line.strip() for line in out.splitlines() if line.startswith("  row ")]
    assert [line.split(":")[0] for line in skipped] == ["row 4", "row 5"]
    assert "'555-12'" in skipped[0] and "'2125550101'" in skipped[1] and "row 2" in skipped[1]
    body = await status_json(config, "dental-reminders")
    assert (body["state"], body["contacts"], body["pending"], body["done"], body["in_flight"]) == \
        ("created", 4, 4, 0, 0)
    assert body["outcomes"] == {"pending": 4} and body["attempts"] == 0
    status, out, _ = await voicebot(config, "campaign", "status")
    assert status == 0 and out.splitlines()[1].split() == ["dental-reminders", "created", "4", "0", "0", "4", "0",
                                                           "0.00", "pending", "4"]

    status, _, err = await voicebot(config, "campaign", "create", str(definition))
    assert status == 1 and "a campaign named 'dental-reminders' exists already" in err


async def test_definition_errors_are_located(config):
    definition = write_campaign(config.parent)
    definition.write_text(definition.read_text().replace("persona: acme-reminders", "persona: nobody"))
    status, out, err = await voicebot(config, "campaign", "create", str(definition))
    assert status == 1 and out == ""
    assert str(definition) in err and "nobody" in err

    other = config.parent / "contacts-latin1.csv"
    other.write_bytes("phone,first_name,appointment\n+12125550101,José,Monday\n".encode("latin-1"))
    definition = write_campaign(config.parent, name="latin")
    status, out, err = await voicebot(config, "campaign", "create", str(definition), "--contacts", str(other))
    assert status == 1 and str(other) in err


# -- state and status --------------------------------------------------------------------------------------------

async def test_state_changes_follow_the_campaign_life(config):
    await voicebot(config, "campaign", "create", str(write_campaign(config.parent)))
    status, _, err = await voicebot(config, "campaign", "pause", "dental-reminders")
    assert status == 1 and "cannot pause campaign 'dental-reminders': it is created (it can: start, cancel)" in err
    status, out, _ = await voicebot(config, "campaign", "start", "dental-reminders")
    assert status == 0 and "state running" in out
    status, _, err = await voicebot(config, "campaign", "start", "dental-reminders")
    assert status == 1 and "it is running" in err
    assert (await voicebot(config, "campaign", "pause", "dental-reminders"))[0] == 0
    assert (await status_json(config, "dental-reminders"))["state"] == "paused"
    status, _, err = await voicebot(config, "campaign", "start", "dental-reminders")
    assert status == 1 and "(it can: resume, cancel)" in err
    assert (await voicebot(config, "campaign", "resume", "dental-reminders"))[0] == 0
    assert (await voicebot(config, "campaign", "cancel", "dental-reminders"))[0] == 0
    body = await status_json(config, "dental-reminders")
    assert body["state"] == "canceled" and body["ended_at"] is not None and body["next_window_opening"] is None
    status, _, err = await voicebot(config, "campaign", "resume", "dental-reminders")
    assert status == 1 and "it is canceled" in err and "it can" not in err

    status, _, err = await voicebot(config, "campaign", "start", "no-such")
    assert status == 1 and "no campaign 'no-such'" in err


async def test_before_any_database_exists_commands_that_read_say_so(config):
    assert await voicebot(config, "campaign", "status") == (0, "no campaigns\n", "")
    status, _, err = await voicebot(config, "campaign", "export", "x", "--format", "csv")
    assert status == 1 and "no campaign 'x'" in err
    assert await voicebot(config, "dnc", "list", "--json") == (0, '{"numbers": []}\n', "")
    assert not (config.parent / "data").exists()


# -- attempts, status figures, export ----------------------------------------------------------------------------

def anytime(_tz: str, at: datetime) -> datetime:
    return at


def no_retry(_outcome: str, _earlier: int):
    return None


def retry_in_2h(_outcome: str, _earlier: int):
    return timedelta(hours=2)


async def dial_all(store: Store, name: str, now: datetime) -> dict:
    """Claim every due contact as the dialer does; phone → claim."""
    campaign = await store.get_campaign(name)
    claims = await store.claim(campaign.id, now=now, horizon_s=3600, limit=100, due=anytime)
    return {claim.phone: claim for claim in claims}


async def play(config: Path) -> datetime:
    """Through the store, as the dialer and the calls do, now (the contacts are due from their creation): Ana
    answers and confirms (a note), Ben does not answer (retry in 2 h), Dee is put on the do-not-call list before
    her dial, Eve's dial is still ringing. When it was."""
    NOW = datetime.now(timezone.utc)
    store = await Store.open(database_url(config))
    try:
        await store.dnc_add("+442079460000", source="cli", now=NOW)
        claims = await dial_all(store, "dental-reminders", NOW)
        assert sorted(claims) == ["+12025550143", "+12125550101", "+33142685300"]
        for n, claim in enumerate(claims.values()):
            await store.mark_dialing(claim.attempt_id, now=NOW)
            await store.mark_dialed(claim.attempt_id, f"CA{n:032x}", now=NOW)
        ana, ben, eve = claims["+12125550101"], claims["+12025550143"], claims["+33142685300"]
        await store.attempt_progress(ana.attempt_id, carrier_call_id="CA" + "0" * 32, status="answered",
                                     now=NOW + timedelta(seconds=5))
        await store.call_result(ana.attempt_id, call_id="c0ffee0000000001", disposition="confirmed",
                                note="confirmed, will bring the X-rays")
        await store.finish_attempt(ana.attempt_id, outcome="answered", now=NOW + timedelta(seconds=40),
                                   retry_after=no_retry, due=anytime)
        await store.finish_attempt(ben.attempt_id, outcome="no-answer", now=NOW + timedelta(seconds=30),
                                   retry_after=retry_in_2h, due=anytime)
        await store.attempt_progress(eve.attempt_id, carrier_call_id=f"CA{2:032x}", status="ringing",
                                     now=NOW + timedelta(seconds=3))
    finally:
        await store.close()
    return NOW


EXPECTED_ROWS = [   # phone, outcome, attempts, note, call_ids, first_name, appointment, clinic
    ["+12125550101", "confirmed", "1", "confirmed, will bring the X-rays", "c0ffee0000000001", "Ana",
     "Monday 10:00", "Downtown"],
    ["+12025550143", "no-answer", "1", "", "", "Ben", "Tuesday 11:30", "Uptown"],
    ["+442079460000", "dnc", "0", "", "", "Dee", "Thursday 15:00", "London"],
    ["+33142685300", "pending", "1", "", "", "Eve", "Friday 16:00", "Paris"],
]


async def test_status_figures_and_exports_after_attempts(config, tmp_path):
    await voicebot(config, "campaign", "create", str(write_campaign(config.parent)))
    await voicebot(config, "campaign", "start", "dental-reminders")
    now = await play(config)

    body = await status_json(config, "dental-reminders")
    assert body["state"] == "running" and body["contacts"] == 4
    assert (body["done"], body["in_flight"], body["pending"], body["dnc"], body["attempts"]) == (1, 1, 1, 1, 3)
    assert body["outcomes"] == {"confirmed": 1, "dnc": 1, "no-answer": 1}     # Eve's in flight
    assert body["rate"]["limit_per_second"] == 2 and body["max_concurrent_calls"] == 3
    assert body["rate"]["dials_last_60s"] == 3
    assert body["next_due_at"] == (now + timedelta(seconds=30, hours=2)).isoformat().replace("+00:00", "Z")
    assert body["next_window_opening"] == body["next_due_at"]

    status, out, err = await voicebot(config, "campaign", "status", "dental-reminders")
    assert status == 0, err
    assert "contacts 4: done 1, in flight 1, pending 1, do-not-call 1" in out
    assert "outcomes: confirmed 1, dnc 1, no-answer 1" in out

    status, out, _ = await voicebot(config, "campaign", "export", "dental-reminders", "--format", "csv")
    rows = list(csv.reader(io.StringIO(out)))
    assert status == 0
    assert rows[0] == ["phone", "outcome", "attempts", "note", "call_ids", "first_name", "appointment", "clinic"]
    assert sorted(rows[1:]) == sorted(EXPECTED_ROWS)

    target = tmp_path / "out" / "results.json"
    target.parent.mkdir()
    status, out, err = await voicebot(config, "campaign", "export", "dental-reminders", "--format", "json",
                                      "-o", str(target))
    assert status == 0 and out == "" and f"4 row(s) written to {target}" in err
    listed = json.loads(target.read_text(encoding="utf-8"))
    assert sorted(listed, key=lambda r: r["phone"]) == sorted(
        [dict(zip(rows[0], [phone, outcome, int(attempts), note or None, [ids] if ids else [], *own]))
         for phone, outcome, attempts, note, ids, *own in EXPECTED_ROWS], key=lambda r: r["phone"])


async def test_watch_draws_one_line_per_refresh_until_the_campaign_ends(config):
    await voicebot(config, "campaign", "create", str(write_campaign(config.parent)))
    await voicebot(config, "campaign", "start", "dental-reminders")
    await play(config)
    lines: asyncio.Queue[str] = asyncio.Queue()

    class Lines(io.StringIO):       # not a terminal: one line per refresh
        def write(self, text: str) -> int:
            for line in text.splitlines():
                lines.put_nowait(line)
            return len(text)

    store = await Store.open(database_url(config))
    try:
        watching = asyncio.create_task(watch(store, "dental-reminders", Lines(), interval_s=0.01))
        first, second = await lines.get(), await lines.get()
        for line in (first, second):
            assert line.startswith("dental-reminders [") and line.endswith("running")
            assert " 2/4 done, 1 in flight  confirmed 1, dnc 1, no-answer 1  " in line
            assert "[" + "#" * 10 + "n" * 10 + "d" * 10 + ">" * 10 + "]" in line
        await voicebot(config, "campaign", "cancel", "dental-reminders")
        final = await asyncio.wait_for(watching, 10)
    finally:
        await store.close()
    assert final["state"] == "canceled"
    drawn = [lines.get_nowait() for _ in range(lines.qsize())]
    assert drawn[-1].endswith("canceled")


async def test_watch_on_a_terminal_redraws_one_line(config, monkeypatch):
    await voicebot(config, "campaign", "create", str(write_campaign(config.parent)))
    await voicebot(config, "campaign", "cancel", "dental-reminders")

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("COLUMNS", "100")
    screen = Terminal()
    store = await Store.open(database_url(config))
    try:
        await watch(store, "dental-reminders", screen, interval_s=0.01)
    finally:
        await store.close()
    drawn = screen.getvalue()
    assert drawn.startswith("\r\x1b[K") and drawn.endswith("canceled\n") and drawn.count("\n") == 1
    line = drawn[len("\r\x1b[K"):-1]
    assert len(line) == 99 and line.startswith("dental-reminders [" + "." * 29 + "] 0/4 done")   # the width left


def test_the_progress_bar_gives_each_outcome_its_share():
    assert progress_bar([("#", 1), ("n", 1), (">", 1), (".", 1)], 20) == "#" * 5 + "n" * 5 + ">" * 5 + "." * 5
    assert progress_bar([("#", 1), ("v", 1), (".", 1)], 10) == "####vvv..."
    assert progress_bar([("#", 0), (".", 0)], 6) == "......"
    drawn = progress_bar([("#", 333), ("b", 333), (".", 334)], 50)
    assert len(drawn) == 50 and drawn.count("#") in (16, 17) and drawn.count(".") == 17


# -- do-not-call -------------------------------------------------------------------------------------------------

async def test_the_do_not_call_list(config, tmp_path):
    status, out, err = await voicebot(config, "dnc", "add", "(212) 555-0187", "--note", "asked by letter")
    assert status == 0 and out == "+12125550187 is on the do-not-call list\n", err
    status, _, err = await voicebot(config, "dnc", "add", "555-12")
    assert status == 1 and "'555-12'" in err
    status, out, _ = await voicebot(config, "dnc", "add", "020 7946 0000", "--region", "gb")
    assert status == 0 and "+442079460000" in out

    numbers = tmp_path / "numbers.csv"
    numbers.write_text("name,Phone\nAl,+1 202 555 0143\nBo,not a number\n\nCy,2125550187\n", encoding="utf-8")
    status, out, err = await voicebot(config, "dnc", "import", str(numbers))
    assert status == 0, err
    assert f"1 number(s) added to the do-not-call list from {numbers} (1 listed already)" in out
    assert "row 3: 'not a number': not a phone number" in out

    plain = tmp_path / "numbers.txt"
    plain.write_text("+33 1 42 68 53 00\n\n+1 555\n", encoding="utf-8")
    status, out, _ = await voicebot(config, "dnc", "import", str(plain))
    assert status == 0 and "1 number(s) added" in out and "row 3: '+1 555'" in out
    status, out, _ = await voicebot(config, "dnc", "import", str(plain))
    assert status == 0 and "0 number(s) added" in out and "(1 listed already)" in out
    status, out, _ = await voicebot(config, "dnc", "add", "+33142685300")
    assert status == 0 and out == "+33142685300 is on the do-not-call list (it was already)\n"

    status, out, _ = await voicebot(config, "dnc", "list", "--json")
    entries = {e["phone"]: e for e in json.loads(out)["numbers"]}
    assert sorted(entries) == ["+12025550143", "+12125550187", "+33142685300", "+442079460000"]
    assert entries["+12125550187"]["source"] == "cli" and entries["+12125550187"]["note"] == "asked by letter"
    assert entries["+12025550143"]["source"] == "import"

    status, out, _ = await voicebot(config, "dnc", "remove", "+1 212 555 0187")
    assert status == 0 and "+12125550187 removed" in out
    status, _, err = await voicebot(config, "dnc", "remove", "+12125550187")
    assert status == 1 and "+12125550187 is not on the do-not-call list" in err
    status, out, _ = await voicebot(config, "dnc", "list")
    assert "+12125550187" not in out and "+12025550143" in out and out.splitlines()[0].split()[0] == "phone"

    latin = tmp_path / "latin.txt"
    latin.write_bytes("+12025550143\nJosé\n".encode("latin-1"))
    status, _, err = await voicebot(config, "dnc", "import", str(latin))
    assert status == 1 and f"{latin}: line 2" in err and "UTF-8" in err


# -- voicebot check ---------------------------------------------------------------------------------------------

def test_check_validates_the_campaigns_beside_the_dialplans(config):
    folder = config.parent / "dialplans" / "campaigns"
    folder.mkdir()
    write_campaign(folder, "dental-reminders")
    check = [sys.executable, "-m", "voicebot.cli", "check", "--config", str(config)]
    done = subprocess.run(check, cwd=REPO, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert "campaign dental-reminders: persona acme-reminders, twilio, 4 contacts, 2 rows skipped" in done.stdout
    assert "  row 4 skipped: '555-12'" in done.stdout
    assert "warning: cannot dial yet:" in done.stdout and "TWILIO_ACCOUNT_SID" in done.stdout
    write_campaign(folder, "dental-reminders", CONTACTS_MISSING_NAMES)
    done = subprocess.run(check, cwd=REPO, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 2
    assert "row 3" in done.stderr and "row 5" in done.stderr and "first_name" in done.stderr


def test_the_next_window_opening_is_the_earliest_over_the_pending_contacts_time_zones(tmp_path):
    from voicebot.campaigns.definition import load_campaign
    from voicebot.campaigns.manage import _next_opening

    path = write_campaign(tmp_path)
    path.write_text(path.read_text() + 'window: {days: [mon, tue, wed, thu, fri], start: "09:00", end: "17:00"}\n')
    spec = load_campaign(path)
    friday_night = datetime(2026, 12, 4, 23, 0, tzinfo=timezone.utc)     # 18:00 in New York, Sat 08:00 in Tokyo
    due = {"America/New_York": friday_night, "Asia/Tokyo": friday_night + timedelta(hours=1)}
    # Both windows are closed until Monday: Tokyo opens first (Mon 09:00 JST = Mon 00:00 UTC).
    assert _next_opening(spec, "running", due, friday_night) == datetime(2026, 12, 7, 0, 0, tzinfo=timezone.utc)
    assert _next_opening(spec, "running", {"America/New_York": friday_night}, friday_night) == \
        datetime(2026, 12, 7, 14, 0, tzinfo=timezone.utc)
    assert _next_opening(spec, "done", due, friday_night) is None
    assert _next_opening(spec, "running", {}, friday_night) is None
