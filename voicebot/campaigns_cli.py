"""``voicebot campaign …`` and ``voicebot dnc …``: outbound campaigns and the do-not-call list, straight on the
configured database (config.yaml's database.url or $VOICEBOT_DATABASE_URL; no server needed). The running
``voicebot serve`` processes pick a started campaign up from the database.

    voicebot campaign create FILE.yaml [--contacts CSV]
    voicebot campaign start|pause|resume|cancel NAME
    voicebot campaign status [NAME] [--json] [--watch [--interval S]]
    voicebot campaign export NAME --format csv|json [-o FILE]
    voicebot dnc add PHONE [--note TEXT] | remove PHONE | list [--json] | import FILE      (all: [--region CC])

Exit status: 0 done, 1 refused (bad definition or contacts, no such campaign, a name taken, a state that does not
allow the change) or the database cannot be used, 2 an option or the config is wrong."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
from datetime import datetime
from pathlib import Path
from typing import IO

from .campaigns import manage
from .config import ConfigError, load_settings
from .store.offline import DatabaseUnavailable, open_for_reading, open_for_writing

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# How a contact shows in the progress bar: by its outcome (what the call set counts as answered), in flight, or
# never dialed yet.
BAR_SYMBOLS = {"voicemail": "v", "no-answer": "n", "busy": "b", "failed": "f", "canceled": "c", "dnc": "d"}
ANSWERED_SYMBOL, IN_FLIGHT_SYMBOL, PENDING_SYMBOL = "#", ">", "."


class CommandError(Exception):
    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.status = status


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="config file (default: $VOICEBOT_CONFIG or ./config.yaml)")


def _region_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--region", default="US", type=str.upper,
                        help="country (ISO 3166 alpha-2) of numbers written without +country code (default US)")


def add_parsers(sub) -> list[argparse.ArgumentParser]:
    """Add ``campaign`` and ``dnc`` with their sub-commands to ``sub`` (argparse subparsers)."""
    campaign = sub.add_parser("campaign", help="outbound campaigns: create, start, pause, resume, cancel, status, "
                              "export", description="Outbound campaigns in the database of config.yaml.")
    csub = campaign.add_subparsers(dest="campaign_command", required=True)
    p = csub.add_parser("create", help="check a campaign definition and its contacts, and store it (not started)")
    p.add_argument("file", type=Path, help="the campaign's YAML definition")
    p.add_argument("--contacts", type=Path, help="the contacts' CSV (default: the file the definition names)")
    _config_option(p)
    for verb, what in (("start", "start dialing"), ("pause", "stop dialing (calls in progress go on)"),
                       ("resume", "dial again after a pause"),
                       ("cancel", "stop for good (calls in progress go on; nothing is dialed again)")):
        p = csub.add_parser(verb, help=what)
        p.add_argument("name")
        _config_option(p)
    p = csub.add_parser("status", help="totals by outcome, in flight, done, pending, rate, next window opening")
    p.add_argument("name", nargs="?", help="one campaign (default: a line for each)")
    p.add_argument("--json", action="store_true", help="JSON, as GET /api/campaigns[/NAME] answers")
    p.add_argument("--watch", action="store_true", help="a progress bar, redrawn until the campaign is done or "
                   "canceled (one line per refresh when the output is not a terminal)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes with --watch (default 2)")
    _config_option(p)
    p = csub.add_parser("export", help="one row per contact: phone, outcome, attempts, note, call_ids, its columns")
    p.add_argument("name")
    p.add_argument("--format", choices=manage.EXPORT_FORMATS, required=True)
    p.add_argument("-o", "--output", type=Path, help="write to this file (default: standard output)")
    _config_option(p)

    dnc = sub.add_parser("dnc", help="the do-not-call list: add, remove, list, import",
                         description="Numbers no campaign dials, in the database of config.yaml.")
    dsub = dnc.add_subparsers(dest="dnc_command", required=True)
    p = dsub.add_parser("add", help="never dial this number")
    p.add_argument("phone")
    p.add_argument("--note", help="why (kept with the entry)")
    _region_option(p)
    _config_option(p)
    p = dsub.add_parser("remove", help="take a number off the list")
    p.add_argument("phone")
    _region_option(p)
    _config_option(p)
    p = dsub.add_parser("list", help="every number on the list, oldest first")
    p.add_argument("--json", action="store_true", help="JSON, as GET /api/dnc answers")
    _config_option(p)
    p = dsub.add_parser("import", help="add every number of a file: a CSV with a phone column, or one per line")
    p.add_argument("file", type=Path)
    _region_option(p)
    _config_option(p)
    return [campaign, dnc]


def _command(args: argparse.Namespace) -> str:
    if args.command == "campaign":
        return f"campaign {args.campaign_command}"
    return f"dnc {args.dnc_command}"


WRITES = {"campaign create", "dnc add", "dnc import"}     # these may create the database; the others need one


async def run(args: argparse.Namespace, *, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """Run one parsed ``voicebot campaign …`` or ``voicebot dnc …`` command; returns the exit status."""
    out, err = out or sys.stdout, err or sys.stderr
    command = _command(args)
    try:
        settings = load_settings(args.config)
        try:
            if command in WRITES:
                store = await open_for_writing(settings.database_url)
            else:
                store = await open_for_reading(settings.database_url)
        except DatabaseUnavailable as exc:
            raise CommandError(str(exc)) from None
        if store is None:           # a SQLite file not created yet: no campaign, no number on the list
            return _nothing_yet(args, command, out)
        try:
            await COMMANDS[command](store, args, settings, out, err)
        finally:
            await store.close()
    except ConfigError as exc:
        print(f"voicebot {command}: configuration error: {exc}", file=err)
        return EXIT_USAGE
    except manage.OperationError as exc:
        print(f"voicebot {command}: {exc}", file=err)
        return EXIT_FAILED
    except CommandError as exc:
        print(f"voicebot {command}: {exc}", file=err)
        return exc.status
    return EXIT_OK


def _nothing_yet(args, command: str, out: IO[str]) -> int:
    if command == "campaign status" and args.name is None:
        print('{"campaigns": []}' if args.json else "no campaigns", file=out)
        return EXIT_OK
    if command == "dnc list":
        print('{"numbers": []}' if args.json else "the do-not-call list is empty", file=out)
        return EXIT_OK
    if command == "dnc remove":
        raise manage.NotFound(f"{args.phone} is not on the do-not-call list")
    raise manage.NotFound(f"no campaign {args.name!r}")


# -- campaign ----------------------------------------------------------------------------------------------------

async def _create(store, args, settings, out: IO[str], err: IO[str]) -> None:
    from .dialplan import load_dialplan

    created = await manage.create(store, args.file, args.contacts, load_dialplan(settings.dialplans_dir))
    print(f"campaign {created.name} created: {created.contacts} contact(s) to call (id {created.id}); "
          f"start it with: voicebot campaign start {created.name}", file=out)
    if created.skipped:
        print(f"{len(created.skipped)} row(s) skipped, never dialed:", file=out)
        for problem in created.skipped:
            print(f"  row {problem.row}: {problem.value!r}: {problem.problem}", file=out)


def _changer(action: str):
    done = {"start": "started", "pause": "paused", "resume": "resumed", "cancel": "canceled"}[action]

    async def change(store, args, settings, out: IO[str], err: IO[str]) -> None:
        row = await manage.change_state(store, args.name, action)
        print(f"campaign {row.name} {done} (state {row.state})", file=out)
    return change


async def _status(store, args, settings, out: IO[str], err: IO[str]) -> None:
    if args.watch:
        if args.name is None:
            raise CommandError("--watch needs a campaign NAME", EXIT_USAGE)
        if args.interval <= 0:
            raise CommandError(f"--interval: must be > 0, got {args.interval}", EXIT_USAGE)
        await watch(store, args.name, out, interval_s=args.interval)
        return
    if args.name is None:
        listed = await manage.statuses(store)
        if args.json:
            _json({"campaigns": listed}, out)
        else:
            print(campaigns_table(listed), file=out)
        return
    status = await manage.status(store, args.name)
    if args.json:
        _json(status, out)
    else:
        print(status_text(status), file=out)


async def _export(store, args, settings, out: IO[str], err: IO[str]) -> None:
    text, rows = await manage.export(store, args.name, args.format)
    if args.output is None:
        out.write(text)
        return
    try:
        args.output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"-o {args.output}: {exc.strerror or exc}") from None
    print(f"{rows} row(s) written to {args.output}", file=err)


# -- dnc ---------------------------------------------------------------------------------------------------------

async def _dnc_add(store, args, settings, out: IO[str], err: IO[str]) -> None:
    number, added = await manage.dnc_add(store, args.phone, source="cli", region=args.region, note=args.note)
    print(f"{number} is on the do-not-call list{'' if added else ' (it was already)'}", file=out)


async def _dnc_remove(store, args, settings, out: IO[str], err: IO[str]) -> None:
    number = await manage.dnc_remove(store, args.phone, region=args.region)
    print(f"{number} removed from the do-not-call list", file=out)


async def _dnc_list(store, args, settings, out: IO[str], err: IO[str]) -> None:
    entries = await manage.dnc_list(store)
    if args.json:
        _json({"numbers": entries}, out)
        return
    if not entries:
        print("the do-not-call list is empty", file=out)
        return
    rows = [("phone", "added (UTC)", "source", "note")]
    rows += [(e["phone"], e["added_at"].replace("T", " ")[:19], e["source"], e["note"] or "") for e in entries]
    print(_table(rows), file=out)


async def _dnc_import(store, args, settings, out: IO[str], err: IO[str]) -> None:
    try:
        data = args.file.read_bytes()
    except OSError as exc:
        raise CommandError(f"{args.file}: {exc.strerror or exc}") from None
    imported = await manage.dnc_import(store, data, source_name=str(args.file), region=args.region)
    print(f"{imported.added} number(s) added to the do-not-call list from {args.file}"
          f"{f' ({imported.listed_already} listed already)' if imported.listed_already else ''}", file=out)
    if imported.skipped:
        print(f"{len(imported.skipped)} row(s) skipped, not numbers:", file=out)
        for problem in imported.skipped:
            print(f"  row {problem.row}: {problem.value!r}: {problem.problem}", file=out)


COMMANDS = {
    "campaign create": _create, "campaign start": _changer("start"), "campaign pause": _changer("pause"),
    "campaign resume": _changer("resume"), "campaign cancel": _changer("cancel"), "campaign status": _status,
    "campaign export": _export,
    "dnc add": _dnc_add, "dnc remove": _dnc_remove, "dnc list": _dnc_list, "dnc import": _dnc_import,
}


# -- presentation ------------------------------------------------------------------------------------------------

def _json(value, out: IO[str]) -> None:
    json.dump(value, out, ensure_ascii=False, indent=2)
    print(file=out)


def _table(rows: list[tuple]) -> str:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def _when(iso: str | None) -> str:
    if iso is None:
        return "-"
    moment = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _outcomes(status: dict) -> str:
    return ", ".join(f"{name} {count}" for name, count in status["outcomes"].items() if count) or "none yet"


def status_text(status: dict) -> str:
    rate = status["rate"]
    opening = status["next_window_opening"]
    return "\n".join([
        f"campaign {status['name']} ({status['state']})   persona {status['persona']} via {status['carrier']}",
        f"contacts {status['contacts']}: done {status['done']}, in flight {status['in_flight']}, "
        f"pending {status['pending']}, do-not-call {status['dnc']}",
        f"outcomes: {_outcomes(status)}",
        f"attempts {status['attempts']}; rate {rate['per_second']:.2f}/s over the last minute "
        f"(limit {rate['limit_per_second']:g}/s, {status['max_concurrent_calls']} at once)",
        f"next window opening: {_when(opening)}",
    ])


def campaigns_table(listed: list[dict]) -> str:
    if not listed:
        return "no campaigns"
    rows = [("name", "state", "contacts", "done", "in flight", "pending", "dnc", "rate/s", "outcomes")]
    for s in listed:
        rows.append((s["name"], s["state"], s["contacts"], s["done"], s["in_flight"], s["pending"], s["dnc"],
                     f"{s['rate']['per_second']:.2f}", _outcomes(s)))
    return _table(rows)


def bar_segments(status: dict) -> list[tuple[str, int]]:
    """(symbol, contacts) in bar order: answered, the other outcomes, in flight, never dialed."""
    counts: dict[str, int] = {}
    for name, count in status["outcomes"].items():
        symbol = PENDING_SYMBOL if name == "pending" else BAR_SYMBOLS.get(name, ANSWERED_SYMBOL)
        counts[symbol] = counts.get(symbol, 0) + count
    order = [ANSWERED_SYMBOL, *BAR_SYMBOLS.values()]
    segments = [(symbol, counts[symbol]) for symbol in order if counts.get(symbol)]
    return segments + [(IN_FLIGHT_SYMBOL, status["in_flight"]), (PENDING_SYMBOL, counts.get(PENDING_SYMBOL, 0))]


def progress_bar(segments: list[tuple[str, int]], width: int) -> str:
    """``width`` characters, each segment's share of the total (largest remainders, so they add up exactly)."""
    total = sum(count for _, count in segments)
    if total == 0 or width <= 0:
        return PENDING_SYMBOL * max(width, 0)
    shares = [count * width / total for _, count in segments]
    cells = [int(share) for share in shares]
    order = sorted(range(len(segments)), key=lambda i: shares[i] - cells[i], reverse=True)
    for i in order[:width - sum(cells)]:
        cells[i] += 1
    return "".join(symbol * n for (symbol, _), n in zip(segments, cells))


def progress_line(status: dict, bar_width: int = 40) -> str:
    finished = status["done"] + status["dnc"]
    return (f"{status['name']} [{progress_bar(bar_segments(status), bar_width)}] {finished}/{status['contacts']} "
            f"done, {status['in_flight']} in flight  {_outcomes(status)}  {status['rate']['per_second']:.2f}/s  "
            f"{status['state']}")


async def watch(store, name: str, out: IO[str], *, interval_s: float) -> dict:
    """Redraw the progress line until the campaign is done or canceled (one line per refresh when ``out`` is not a
    terminal); the last status."""
    redraw = out.isatty()
    while True:
        status = await manage.status(store, name)
        if redraw:      # the bar takes what the terminal leaves of its width, 10 to 50 characters
            rest = len(progress_line(status, 0))
            line = progress_line(status, max(10, min(50, shutil.get_terminal_size().columns - 1 - rest)))
            out.write("\r\x1b[K" + line)
        else:
            out.write(progress_line(status) + "\n")
        out.flush()
        if status["state"] in manage.FINISHED_STATES:
            if redraw:
                out.write("\n")
            return status
        await asyncio.sleep(interval_s)
