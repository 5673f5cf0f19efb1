"""Campaign operations, one implementation for ``voicebot campaign …`` / ``voicebot dnc …`` and for the admin API's
``/api/campaigns…`` / ``/api/dnc…``: create a campaign from its definition and contacts, change its state, its
status, its results as CSV or JSON, and the do-not-call list.

Every refusal is an ``OperationError`` whose message says what was wrong and where (file:field, row N); its kind
(``Invalid``, ``NotFound``, ``Conflict``) is what the CLI's exit status and the API's HTTP status are made of."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import phonenumbers

from ..config import ConfigError, parse_yaml
from ..dialplan import Dialplan
from ..store import CampaignExists, InvalidTransition, UnknownCampaign
from . import schedule
from .contacts import ContactList, RowProblem, normalise, read_contacts
from .definition import CampaignError, CampaignSpec, check_against, load_campaign, read_campaign, required_variables

EXPORT_COLUMNS = ("phone", "outcome", "attempts", "note", "call_ids")
EXPORT_FORMATS = ("csv", "json")
FINISHED_STATES = ("done", "canceled")
# verb → (the states it starts from, the state it leads to)
ACTIONS = {
    "start": (("created",), "running"),
    "pause": (("running",), "paused"),
    "resume": (("paused",), "running"),
    "cancel": (("created", "running", "paused"), "canceled"),
}


class OperationError(Exception):
    """An operation refused; the message names what was wrong."""


class Invalid(OperationError):
    """The definition, the contacts or an argument is wrong."""


class NotFound(OperationError):
    """No such campaign (or number on the do-not-call list)."""


class Conflict(OperationError):
    """The name is taken, or the campaign's state does not allow the change."""


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


# -- create ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Created:
    """A stored campaign: how many contacts it will call, and the rows skipped (never dialed)."""

    name: str
    id: str
    contacts: int
    skipped: list[RowProblem] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"name": self.name, "id": self.id, "contacts": self.contacts, "skipped": _problems_json(self.skipped)}


async def create(store, definition: Path, contacts: Path | None, dialplan: Dialplan, *,
                 now: datetime | None = None) -> Created:
    """The campaign defined in the YAML file ``definition``, its contacts from ``contacts`` (else the file the
    definition names), checked against the dialplan and stored in state ``created``."""
    try:
        spec = load_campaign(definition)
    except CampaignError as exc:
        raise Invalid(str(exc)) from None
    source = contacts if contacts is not None else spec.contacts
    if source is None:
        raise Invalid(f"{spec.source}: contacts: no contacts file (name one in the definition, or give --contacts)")
    return await _create(store, spec, Path(source), dialplan, now)


async def create_from_text(store, definition: str, contacts: str, dialplan: Dialplan, *, source: str = "request",
                           now: datetime | None = None) -> Created:
    """The same from texts: the YAML definition and the contacts' CSV (a ``contacts:`` path in the definition is
    not read: the files of whoever sends the texts are not ours to open). Messages name ``source:definition`` and
    ``source:contacts``."""
    definition_source, contacts_source = f"{source}:definition", f"{source}:contacts"
    try:
        data = parse_yaml(definition, definition_source)
    except ConfigError as exc:
        raise Invalid(f"{definition_source}: not YAML ({exc.field_path}): {exc.problem}") from None
    if not isinstance(data, dict):
        raise Invalid(f"{definition_source}: expected a mapping of campaign fields, got {type(data).__name__}")
    data = {key: value for key, value in data.items() if key != "contacts"}
    if not isinstance(contacts, str) or not contacts.strip():
        raise Invalid(f"{contacts_source}: expected the contacts' CSV text (a header row with a phone column)")
    try:
        spec = read_campaign(data, definition_source, Path.cwd())
    except CampaignError as exc:
        raise Invalid(str(exc)) from None
    return await _create(store, spec, contacts, dialplan, now, contacts_source=contacts_source)


def checked(spec: CampaignSpec, contacts: Path | str, dialplan: Dialplan, *,
            contacts_source: str | None = None) -> ContactList:
    """The campaign's contacts, read and checked against the campaign's persona; Invalid names what is wrong."""
    problems = check_against(spec, dialplan)
    if problems:
        raise Invalid("\n".join(problems))
    persona = dialplan.named(spec.persona)
    options = dict(default_region=spec.default_region, default_timezone=spec.default_timezone,
                   required=required_variables(spec, persona))
    if contacts_source is not None:
        options["source"] = contacts_source
    try:
        listed = read_contacts(contacts, **options)
    except CampaignError as exc:
        raise Invalid(str(exc)) from None
    if not listed.contacts:
        where = contacts_source or str(contacts)
        skipped = f" (every row skipped: {_problems_text(listed.skipped[:5])}" + \
            ("; …)" if len(listed.skipped) > 5 else ")") if listed.skipped else ""
        raise Invalid(f"{where}: no contact to call{skipped}")
    return listed


def check_file(definition: Path, dialplan: Dialplan) -> tuple[CampaignSpec, ContactList]:
    """What ``create`` checks, without a database (``voicebot check``)."""
    try:
        spec = load_campaign(definition)
    except CampaignError as exc:
        raise Invalid(str(exc)) from None
    if spec.contacts is None:
        raise Invalid(f"{spec.source}: contacts: no contacts file named")
    return spec, checked(spec, Path(spec.contacts), dialplan)


async def _create(store, spec: CampaignSpec, contacts: Path | str, dialplan: Dialplan, now: datetime | None, *,
                  contacts_source: str | None = None) -> Created:
    listed = checked(spec, contacts, dialplan, contacts_source=contacts_source)
    try:
        campaign_id = await store.create_campaign(spec, listed.contacts, now=now or now_utc())
    except CampaignExists:
        raise Conflict(f"a campaign named {spec.name!r} exists already (names are kept for good: choose another)") \
            from None
    return Created(name=spec.name, id=campaign_id, contacts=len(listed.contacts), skipped=list(listed.skipped))


def _problems_text(problems: Iterable[RowProblem]) -> str:
    return "; ".join(f"row {p.row}: {p.value!r}: {p.problem}" for p in problems)


def _problems_json(problems: Iterable[RowProblem]) -> list[dict]:
    return [{"row": p.row, "value": p.value, "problem": p.problem} for p in problems]


# -- state -------------------------------------------------------------------------------------------------------

async def campaign(store, name: str):
    """The campaign row by name (or id); NotFound otherwise."""
    row = await store.get_campaign(name)
    if row is None:
        raise NotFound(f"no campaign {name!r}")
    return row


async def change_state(store, name: str, action: str, *, now: datetime | None = None):
    """``start``, ``pause``, ``resume`` or ``cancel`` the campaign; its row after the change."""
    if action not in ACTIONS:
        raise Invalid(f"unknown action {action!r}: expected one of {', '.join(ACTIONS)}")
    sources, target = ACTIONS[action]
    row = await campaign(store, name)
    if row.state not in sources:
        raise Conflict(_refusal(row.name, row.state, action))
    try:
        return await store.set_campaign_state(row.name, target, now=now or now_utc())
    except UnknownCampaign:         # deleted meanwhile
        raise NotFound(f"no campaign {name!r}") from None
    except InvalidTransition:       # changed meanwhile, by another command or the dialer
        current = await campaign(store, name)
        raise Conflict(_refusal(current.name, current.state, action)) from None


def actions_from(state: str) -> list[str]:
    """What can be done to a campaign in this state (the verbs of ACTIONS)."""
    return [verb for verb, (sources, _) in ACTIONS.items() if state in sources]


def _refusal(name: str, state: str, action: str) -> str:
    able = actions_from(state)
    hint = f" (it can: {', '.join(able)})" if able else ""
    return f"cannot {action} campaign {name!r}: it is {state}{hint}"


# -- status ------------------------------------------------------------------------------------------------------

async def status(store, name: str, *, now: datetime | None = None) -> dict:
    """What the campaign has done and will do, as JSON: its contacts by outcome (what the call set, else the last
    attempt's; ``pending`` never dialed; those in flight not counted), in flight, done, pending, do-not-call,
    attempts, the dial rate over the last minute against the set rate, the next window opening."""
    row = await campaign(store, name)
    return await _status(store, row, now or now_utc())


async def statuses(store, *, now: datetime | None = None) -> list[dict]:
    moment = now or now_utc()
    return [await _status(store, row, moment) for row in await store.list_campaigns()]


async def _status(store, row, now: datetime) -> dict:
    spec = CampaignSpec.from_json(row.definition)
    figures = await store.campaign_status(row.id, now=now)
    recent = figures["dials_last_60s"]
    next_due = figures.get("next_due_at")
    return {
        "name": row.name, "id": row.id, "state": row.state, "persona": spec.persona, "carrier": spec.carrier,
        "created_at": _iso(row.created_at), "started_at": _iso(row.started_at), "ended_at": _iso(row.ended_at),
        "contacts": figures["contacts"],
        "outcomes": dict(sorted(figures["outcomes"].items())),
        "in_flight": figures["in_flight"], "done": figures["done"], "pending": figures["pending"],
        "dnc": figures["dnc"], "attempts": figures["attempts"],
        "rate": {"dials_last_60s": recent, "per_second": round(recent / 60, 3),
                 "limit_per_second": spec.calls_per_second},
        "max_concurrent_calls": spec.max_concurrent_calls,
        "next_due_at": _iso(next_due),
        "next_window_opening": _iso(_next_opening(spec, row.state, figures["pending_due_by_zone"], now)),
    }


def _next_opening(spec: CampaignSpec, state: str, due_by_zone: dict[str, datetime], now: datetime) -> datetime | None:
    """When the next contact may be dialled: the earliest moment, over the pending contacts' time zones, that is
    at or after their due time and inside the calling window there; None when the campaign will dial no more."""
    if state in FINISHED_STATES:
        return None
    openings = [schedule.due_at(spec, zone, max(now, due)) for zone, due in due_by_zone.items()]
    return min((at for at in openings if at is not None), default=None)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


# -- export ------------------------------------------------------------------------------------------------------

async def export(store, name: str, fmt: str) -> tuple[str, int]:
    """One row per contact as ``csv`` or ``json`` text; the text and how many rows."""
    if fmt not in EXPORT_FORMATS:
        raise Invalid(f"format: expected one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    _row, rows = await results(store, name)
    return (export_csv(rows) if fmt == "csv" else export_json(rows)), len(rows)


async def results(store, name: str) -> tuple:
    """The campaign's row and one result per contact, as exported (the store's rows: phone, outcome, attempts,
    note, call_ids, then the contact's own columns)."""
    row = await campaign(store, name)
    return row, await store.export_rows(row.id)


def export_columns(rows: list[dict]) -> list[str]:
    """The result columns, then the contacts' own in the order they first appear (a contact list's rows all have
    the same columns; the union keeps every value should they not)."""
    return list(dict.fromkeys([*EXPORT_COLUMNS, *(name for row in rows for name in row)]))


def export_csv(rows: list[dict]) -> str:
    """The store's rows as they are: ``call_ids`` joined with ``;``, an empty cell for nothing."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=export_columns(rows), restval="", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({name: ("" if value is None else value) for name, value in row.items()})
    return out.getvalue()


def export_json(rows: list[dict]) -> str:
    """A list of objects with the CSV's columns, typed: ``attempts`` a number, ``call_ids`` a list, no note null."""
    columns = export_columns(rows)
    listed = []
    for row in rows:
        typed = {name: row.get(name) for name in columns}
        typed["call_ids"] = [c for c in (row["call_ids"] or "").split(";") if c]
        typed["note"] = row["note"] or None
        listed.append(typed)
    return json.dumps(listed, ensure_ascii=False, indent=2) + "\n"


# -- do-not-call -------------------------------------------------------------------------------------------------

def normalise_phone(text: str, region: str) -> str:
    """``text`` as E.164 (any common format, as in contact lists; ``region`` for numbers without a country code);
    Invalid otherwise."""
    _check_region(region)
    number, problem = normalise((text or "").strip(), region)
    if number is None:
        raise Invalid(f"{(text or '').strip()!r}: {problem}")
    return number


def _check_region(region: str) -> None:
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise Invalid(f"region: expected a two-letter country code such as US, GB, DE, got {region!r}")


async def dnc_add(store, phone: str, *, source: str, region: str = "US", note: str | None = None,
                  now: datetime | None = None) -> tuple[str, bool]:
    """Put the number on the do-not-call list: its E.164 form, and False when it was on it already (the first
    entry stays as it was)."""
    number = normalise_phone(phone, region)
    return number, await store.dnc_add(number, source=source, note=note, now=now or now_utc())


async def dnc_remove(store, phone: str, *, region: str = "US") -> str:
    number = normalise_phone(phone, region)
    if not await store.dnc_remove(number):
        raise NotFound(f"{number} is not on the do-not-call list")
    return number


async def dnc_list(store) -> list[dict]:
    return [{"phone": entry.phone, "added_at": _iso(entry.added_at), "source": entry.source, "note": entry.note}
            for entry in await store.dnc_list()]


@dataclass(frozen=True)
class Imported:
    added: int              # numbers new on the list
    listed_already: int     # numbers of the file that were on it (they keep their first entry)
    skipped: list[RowProblem]

    def to_json(self) -> dict:
        return {"added": self.added, "listed_already": self.listed_already, "skipped": _problems_json(self.skipped)}


def read_numbers(data: bytes | str, *, region: str, source: str) -> tuple[list[str], list[RowProblem]]:
    """A do-not-call import: a CSV with a ``phone`` column (rows numbered as a spreadsheet shows them, the header
    being row 1), or one number per line. The E.164 numbers, and the rows that are not numbers."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = data[:exc.start].count(b"\n") + 1
            raise Invalid(f"{source}: line {line} (byte {exc.start}): not UTF-8 text") from None
    lines = data.lstrip("\ufeff").splitlines()
    first = lines[0] if lines else ""
    try:
        header = [name.strip().lower() for name in next(csv.reader([first]), [])]
    except csv.Error as exc:         # a NUL, a field past csv's size limit
        raise Invalid(f"{source}: line 1: not readable as CSV: {exc}") from None
    if "phone" in header:
        rows = csv.reader(lines[1:])
        column = header.index("phone")
        try:
            values = [(number, cells[column] if column < len(cells) else "")
                      for number, cells in enumerate(rows, start=2) if any(c.strip() for c in cells)]
        except csv.Error as exc:
            raise Invalid(f"{source}: line {rows.line_num + 1}: not readable as CSV: {exc}") from None
    else:
        if len(header) > 1:
            raise Invalid(f"{source}: line 1: expected a CSV with a phone column, or one number per line; "
                          f"found the columns {', '.join(header)}")
        values = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    _check_region(region)
    numbers, problems = [], []
    for row, value in values:
        number, problem = normalise(value.strip(), region)
        if number is None:
            problems.append(RowProblem(row=row, value=value.strip(), problem=problem))
        else:
            numbers.append(number)
    return numbers, problems


async def dnc_import(store, data: bytes | str, *, source_name: str, region: str = "US", source: str = "import",
                     now: datetime | None = None) -> Imported:
    """Every number of the file on the do-not-call list; the rows that are not numbers are reported, not lost."""
    numbers, problems = read_numbers(data, region=region, source=source_name)
    unique = list(dict.fromkeys(numbers))
    added = await store.dnc_add_many(unique, source=source, now=now or now_utc())
    return Imported(added=added, listed_already=len(unique) - added, skipped=problems)
