"""``voicebot calls list · show``: the call records, read straight from the configured database (no server).

    voicebot calls list [--persona P] [--since ISO] [--until ISO] [--outcome O] [--limit N] [--cursor C] [--json]
    voicebot calls show ID [--json]

Times are shown in UTC; ``--since``/``--until`` without an offset are UTC too. The command only reads: it does
not create or upgrade the database (the server does that when it starts).
Exit status: 0 done, 1 no such call or the database cannot be read, 2 an option or the config is wrong."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import IO

from .config import ConfigError, load_settings
from .store.offline import DatabaseUnavailable, open_for_reading, sqlite_path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CallsCommandError(Exception):
    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.status = status


def add_parser(sub) -> argparse.ArgumentParser:
    """Add ``calls`` with its ``list`` and ``show`` sub-commands to ``sub`` (argparse subparsers)."""
    calls = sub.add_parser("calls", help="list the call records, or show one call with its transcript",
                           description="Call records from the database in config.yaml (database.url).")
    csub = calls.add_subparsers(dest="calls_command", required=True)

    p = csub.add_parser("list", help="calls, newest first: start, duration, persona, from → to, outcome, turns")
    p.add_argument("--persona")
    p.add_argument("--since", help="calls that started at or after this ISO 8601 time (UTC unless it says)")
    p.add_argument("--until", help="calls that started before this ISO 8601 time")
    p.add_argument("--outcome", help="how the calls ended, e.g. completed, transferred, failed")
    p.add_argument("--limit", type=int, default=50, help="how many (1–500, default 50)")
    p.add_argument("--cursor", help="continue where a previous list ended")
    p.add_argument("--json", action="store_true", help="JSON, as GET /api/calls answers")
    p.add_argument("--config", help="config file (default: $VOICEBOT_CONFIG or ./config.yaml)")

    p = csub.add_parser("show", help="one call in full, with its transcript")
    p.add_argument("id", help="the call id (16 hex digits, as `calls list` shows)")
    p.add_argument("--json", action="store_true", help="the whole record as JSON, as GET /api/calls/ID answers")
    p.add_argument("--config", help="config file (default: $VOICEBOT_CONFIG or ./config.yaml)")
    return calls


async def run(args: argparse.Namespace, *, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """Run one parsed ``voicebot calls …`` command; returns the exit status."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        settings = load_settings(args.config)
        try:
            store = await open_for_reading(settings.database_url)
        except DatabaseUnavailable as exc:
            raise CallsCommandError(str(exc)) from None
        if store is None:           # a SQLite file not created yet: no server has run with this config
            if args.calls_command == "show":
                raise CallsCommandError(f"no call {args.id} (no database yet at {sqlite_path(settings.database_url)})")
            print("{\"calls\": [], \"next_cursor\": null}" if args.json else "no calls yet", file=out)
            return EXIT_OK
        try:
            if args.calls_command == "list":
                await _list(store, args, out, err)
            else:
                await _show(store, args, out)
        finally:
            await store.close()
    except ConfigError as exc:
        print(f"voicebot calls: configuration error: {exc}", file=err)
        return EXIT_USAGE
    except CallsCommandError as exc:
        print(f"voicebot calls {args.calls_command}: {exc}", file=err)
        return exc.status
    return EXIT_OK


def _time(option: str, text: str | None) -> datetime | None:
    from .store import parse_time

    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError as exc:
        raise CallsCommandError(f"{option}: {exc}", EXIT_USAGE) from None


async def _list(store, args, out: IO[str], err: IO[str]) -> None:
    from .store import OUTCOMES, InvalidCursor

    if args.limit < 1:
        raise CallsCommandError(f"--limit: must be ≥ 1, got {args.limit}", EXIT_USAGE)
    if args.outcome is not None and args.outcome not in OUTCOMES:
        raise CallsCommandError(f"--outcome: expected one of {', '.join(OUTCOMES)}, got {args.outcome!r}",
                                EXIT_USAGE)
    try:
        calls, next_cursor = await store.list_calls(
            persona=args.persona, since=_time("--since", args.since), until=_time("--until", args.until),
            outcome=args.outcome, limit=args.limit, cursor=args.cursor)
    except InvalidCursor as exc:
        raise CallsCommandError(f"--cursor: {exc}", EXIT_USAGE) from None
    if args.json:
        json.dump({"calls": [c.to_dict() for c in calls], "next_cursor": next_cursor}, out, ensure_ascii=False,
                  indent=2)
        print(file=out)
        return
    if not calls:
        print("no calls match", file=out)
        return
    rows = [("started (UTC)", "duration", "persona", "from → to", "outcome", "turns", "id")]
    for call in calls:
        rows.append((call.started_at.strftime("%Y-%m-%d %H:%M:%S"), _duration(call.duration_s), call.persona,
                     f"{call.from_number or '?'} → {call.to_number or '?'}", call.outcome or "in progress",
                     f"{call.user_turns}/{call.bot_turns}", call.id))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip(), file=out)
    if next_cursor:
        print(f"more: voicebot calls list --cursor {next_cursor} (same filters)", file=err)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}:{secs:02d}"


def _at(ms: int | float | None) -> str:
    """A time into the call, mm:ss.s."""
    if ms is None:
        return "    ?  "
    minutes, secs = divmod(ms / 1000, 60)
    return f"{int(minutes):02d}:{secs:04.1f}"


async def _show(store, args, out: IO[str]) -> None:
    record = await store.get_call(args.id)
    if record is None:
        raise CallsCommandError(f"no call {args.id} in {store.safe_url}")
    if args.json:
        json.dump(record.to_dict(), out, ensure_ascii=False, indent=2)
        print(file=out)
        return
    started = record.started_at

    def since_start(moment: datetime | None) -> str:
        return "-" if moment is None else f"+{(moment - started).total_seconds():.2f} s"

    outcome = record.outcome or "in progress"
    if record.transfer_target:
        outcome += f" to {record.transfer_target}"
    if record.outcome_detail:
        outcome += f" ({record.outcome_detail})"
    latencies = sorted(record.turn_latencies_ms)
    lines = [
        f"call {record.id}   {record.carrier} {record.carrier_call_id or ''}".rstrip(),
        f"persona      {record.persona}",
        f"from → to    {record.from_number or '?'} → {record.to_number or '?'} ({record.direction})",
        f"started      {started.strftime('%Y-%m-%d %H:%M:%S.%f')[:-3]} UTC   answered {since_start(record.answered_at)}"
        f"   ended {since_start(record.ended_at)}   duration {_duration(record.duration_s)}",
        f"outcome      {outcome}" + (f" — {record.end_reason}" if record.end_reason else ""),
        f"engines      {' → '.join(record.engines) or '-'}",
    ]
    for switch in record.engine_switches:
        lines.append(f"  switch     {_at(switch.get('t_ms'))}  {switch.get('from', '?')} → {switch.get('to', '?')}: "
                     f"{switch.get('reason', '')}")
    turn_line = f"turns        {record.user_turns} caller, {record.bot_turns} bot, {record.barge_ins} barge-in(s)"
    if record.first_audio_ms is not None:
        turn_line += f"; first bot audio {record.first_audio_ms} ms"
    if latencies:
        turn_line += f"; turn latency median {latencies[len(latencies) // 2]} ms, max {latencies[-1]} ms"
    lines.append(turn_line)
    for tool in record.tools:
        status = "ok" if tool.get("ok") else "failed"
        lines.append(f"tool         {_at(tool.get('t_ms'))}  {tool.get('name')}("
                     f"{json.dumps(tool.get('arguments'), ensure_ascii=False)}) → {status} "
                     f"{json.dumps(tool.get('result'), ensure_ascii=False)} ({tool.get('duration_ms', '?')} ms)")
    if record.dtmf:
        lines.append("dtmf         " + ", ".join(f"{d.get('digit')} at {_at(d.get('t_ms'))}" for d in record.dtmf))
    if record.recording_path:
        lines.append(f"recording    {record.recording_path}")
    lines.append("")
    lines.append("transcript" if record.transcript else "transcript   (none)")
    for turn in record.transcript:
        who = {"assistant": "bot", "user": "caller"}.get(turn.get("role"), turn.get("role", "?"))
        text = turn.get("text", "")
        if turn.get("interrupted"):
            text += f"  [cut off after {turn.get('heard_ms', '?')} ms; would have said: {turn.get('full_text', '')!r}]"
        lines.append(f"  {_at(turn.get('t_ms'))}  {who:<6}  {text}")
    print("\n".join(lines), file=out)
