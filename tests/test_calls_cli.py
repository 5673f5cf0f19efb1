"""``voicebot calls list · show`` on a real SQLite database named by a config file, without a server."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from voicebot.calls_cli import run
from voicebot.cli import build_parser
from voicebot.store import CallRecord, Store
from voicebot.store.migrate import head_revision

from records import T0, full_record

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text("database: {url: 'sqlite:///data/calls.db'}\n", encoding="utf-8")
    return path


@pytest.fixture
async def records(config) -> list[CallRecord]:
    """Twelve finished calls and one in progress, in the config's database."""
    saved = [full_record(n) for n in range(12)]
    saved.append(full_record(12, outcome=None, ended_at=None, duration_s=None, end_reason=None, user_turns=0,
                             bot_turns=1, transcript=saved[0].transcript[:1]))
    (config.parent / "data").mkdir()
    store = await Store.open(f"sqlite:///{config.parent / 'data' / 'calls.db'}")
    try:
        await store.save_calls(saved)
    finally:
        await store.close()
    return saved


async def calls(config: Path, *argv: str) -> tuple[int, str, str]:
    """Run ``voicebot calls …`` in this process: (exit status, stdout, stderr)."""
    args = build_parser().parse_args(["calls", *argv, "--config", str(config)])
    out, err = io.StringIO(), io.StringIO()
    status = await run(args, out=out, err=err)
    return status, out.getvalue(), err.getvalue()


async def test_list_prints_a_table_newest_first(config, records):
    status, out, err = await calls(config, "list")
    assert status == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["started", "(UTC)", "duration", "persona", "from", "→", "to", "outcome", "turns", "id"]
    assert [line.split()[-1] for line in lines[1:]] == [r.id for r in reversed(records)]
    in_progress, newest_done = lines[1], lines[2]
    assert "in progress" in in_progress and " - " in in_progress
    eleven = records[11]
    assert newest_done.split() == [eleven.started_at.strftime("%Y-%m-%d"), eleven.started_at.strftime("%H:%M:%S"),
                                   "0:42", eleven.persona, eleven.from_number, "→", eleven.to_number,
                                   eleven.outcome, "3/4", eleven.id]


async def test_list_filters_and_pages_like_the_api(config, records):
    status, out, _ = await calls(config, "list", "--persona", "acme-zh", "--json")
    body = json.loads(out)
    assert status == 0 and [c["id"] for c in body["calls"]] == [r.id for r in reversed(records)
                                                               if r.persona == "acme-zh"]
    assert body["next_cursor"] is None and "transcript" not in body["calls"][0]

    since = (T0 + timedelta(seconds=3)).replace(tzinfo=None).isoformat()      # UTC without saying so
    status, out, err = await calls(config, "list", "--since", since, "--until", "2025-03-14T09:27:03.6Z",
                                   "--limit", "4")
    ids = [line.split()[-1] for line in out.splitlines()[1:]]
    assert status == 0 and ids == [f"{n:016x}" for n in (10, 9, 8, 7)]
    cursor = err.split("--cursor ")[1].split()[0]
    status, out, err = await calls(config, "list", "--since", since, "--until", "2025-03-14T09:27:03.6Z",
                                   "--limit", "4", "--cursor", cursor)
    assert [line.split()[-1] for line in out.splitlines()[1:]] == [f"{n:016x}" for n in (6, 5, 4, 3)] and err == ""

    status, out, _ = await calls(config, "list", "--outcome", "transferred")
    assert status == 0 and [line.split()[-1] for line in out.splitlines()[1:]] == \
        [r.id for r in reversed(records) if r.outcome == "transferred"]
    status, out, _ = await calls(config, "list", "--persona", "nobody")
    assert status == 0 and out == "no calls match\n"


async def test_show_prints_the_call_and_its_transcript_with_times(config, records):
    record = records[3]          # transferred, with a switch, tools, DTMF and a cut-off bot turn
    status, out, err = await calls(config, "show", record.id)
    assert status == 0 and err == ""
    assert f"call {record.id}   twilio {record.carrier_call_id}" in out
    assert "from → to    +15550100003 → +15557650199 (inbound)" in out
    assert "started      2025-03-14 09:26:56.589 UTC   answered +0.85 s   ended +42.12 s   duration 0:42" in out
    assert "outcome      transferred to sales — transferred after 42 s" in out
    assert "  switch     00:12.0  stepaudio-2.5-realtime → chain: socket closed: 1011" in out
    assert "turns        3 caller, 4 bot, 1 barge-in(s); first bot audio 612 ms; turn latency median 812 ms, " \
           "max 977 ms" in out
    assert 'tool         00:20.5  check_order({"order_id": "A-1093"}) → ok {"status": "shipped", ' in out
    assert "dtmf         1 at 00:15.0, # at 00:15.4" in out
    transcript = out.split("\ntranscript\n", 1)[1].splitlines()
    assert transcript == [
        "  00:00.9  bot     Hello, this is Acme. How can I help?",
        "  00:05.2  caller  我想查一下订单 A-1093",
        "  00:07.1  bot     Your order  [cut off after 640 ms; would have said: "
        "'Your order A-1093 has shipped and arrives on Sunday.']",
        "  00:07.8  caller  When does it arrive?",
    ]
    status, out, _ = await calls(config, "show", record.id, "--json")
    assert status == 0 and CallRecord.from_dict(json.loads(out)) == record


async def test_an_unknown_call_or_a_bad_option_is_a_clear_error(config, records):
    status, out, err = await calls(config, "show", "ffffffffffffffff")
    assert (status, out) == (1, "")
    assert err == f"voicebot calls show: no call ffffffffffffffff in sqlite:///{config.parent / 'data' / 'calls.db'}\n"
    for argv, message in ((["--since", "last week"], "--since: expected an ISO 8601 date or time"),
                          (["--outcome", "hung_up"], "--outcome: expected one of completed, caller_hung_up"),
                          (["--limit", "0"], "--limit: must be ≥ 1"),
                          (["--cursor", "garbage"], "--cursor: not a cursor this server handed out")):
        status, out, err = await calls(config, "list", *argv)
        assert status == 2 and out == "" and err.startswith(f"voicebot calls list: {message}"), err


async def test_without_a_database_yet_there_are_no_calls_and_nothing_is_created(config):
    assert await calls(config, "list") == (0, "no calls yet\n", "")
    status, _, err = await calls(config, "show", "0000000000000001")
    assert status == 1 and "no call 0000000000000001 (no database yet at " in err
    assert not (config.parent / "data" / "calls.db").exists()


async def test_a_database_the_server_has_not_upgraded_is_not_touched(config):
    (config.parent / "data").mkdir()
    path = config.parent / "data" / "calls.db"
    sqlite3.connect(path).close()                           # an empty file: schema revision none
    status, out, err = await calls(config, "list")
    assert status == 1 and out == ""
    assert f"is at schema revision none, this voicebot reads {head_revision()}: start the server once" in err
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == []


async def test_the_voicebot_command_shows_a_call_and_fails_on_an_unknown_one(config, records):
    async def voicebot(*argv: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "voicebot.cli", "calls", *argv, "--config", str(config), cwd=REPO,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode, out.decode(), err.decode()

    status, out, err = await voicebot("show", records[5].id)
    assert status == 0 and "  00:05.2  caller  我想查一下订单 A-1093" in out, err
    status, out, err = await voicebot("show", "ffffffffffffffff")
    assert status == 1 and out == "" and "no call ffffffffffffffff" in err
