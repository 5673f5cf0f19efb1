"""A campaign's contact list (CSV) → contacts with E.164 numbers and time zones. Rows with a bad or repeated
number are reported and skipped; a list that lacks what the persona needs is refused whole."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import phonenumbers
from phonenumbers import timezone as number_zones

from .definition import CampaignError, valid_zone

PHONE = "phone"
# The export's own columns come first in each row; a contact column of the same name would hide them.
RESULT_COLUMNS = ("outcome", "attempts", "note", "call_ids")
TIMEZONE = "timezone"


@dataclass(frozen=True)
class Contact:
    row: int                     # as a spreadsheet numbers it: the header is row 1, the first contact row 2
    phone: str                   # E.164
    timezone: str                # IANA
    variables: dict[str, str]    # every other column, as given


@dataclass(frozen=True)
class RowProblem:
    row: int
    value: str
    problem: str


@dataclass
class ContactList:
    contacts: list[Contact] = field(default_factory=list)
    skipped: list[RowProblem] = field(default_factory=list)   # never dialled
    columns: list[str] = field(default_factory=list)


def read_contacts(path_or_text: Path | str | bytes, *, default_region: str, default_timezone: str,
                  required: set[str] = frozenset(), source: str | None = None) -> ContactList:
    """A CSV file (a Path), its bytes, or its text (a str) → contacts. ``required``: the columns the persona's
    texts use, which every contact must have a value for. CampaignError for a list that cannot be used."""
    if isinstance(path_or_text, Path):
        source = source or str(path_or_text)
        try:
            raw: bytes | str = path_or_text.read_bytes()
        except OSError as exc:
            raise CampaignError(source, "", f"cannot read: {exc.strerror or exc}") from None
    else:
        source = source or "contacts"
        raw = path_or_text
    records = _records(_decode(raw, source), source)
    if not records or not any(cell.strip() for cell in records[0]):
        raise CampaignError(source, "row 1", f"expected a header row naming the columns, with a {PHONE!r} column")
    columns = [cell.strip() for cell in records[0]]
    phone_at, zone_at = _column_index(columns, source)
    missing_columns = sorted(required - set(columns) - {PHONE, TIMEZONE})
    if missing_columns:
        raise CampaignError(source, "row 1", f"the persona uses {', '.join('{' + c + '}' for c in missing_columns)} "
                                             f"but there is no such column (columns found: {', '.join(columns)})")

    result = ContactList(columns=columns)
    first_row: dict[str, int] = {}
    bad_zones: list[str] = []
    incomplete: list[str] = []
    for row, cells in enumerate(records[1:], start=2):
        if not any(cell.strip() for cell in cells):
            continue        # an empty line
        value = cells[phone_at].strip() if phone_at < len(cells) else ""
        if len(cells) > len(columns):
            result.skipped.append(RowProblem(row, value, f"{len(cells)} cells but the header names "
                                                         f"{len(columns)} columns"))
            continue
        phone, problem = normalise(value, default_region)
        if phone is None:
            result.skipped.append(RowProblem(row, value, problem))
            continue
        if phone in first_row:
            result.skipped.append(RowProblem(row, value, f"{phone} is already on row {first_row[phone]}"))
            continue
        first_row[phone] = row
        zone = cells[zone_at].strip() if zone_at is not None and zone_at < len(cells) else ""
        if zone and not valid_zone(zone):
            bad_zones.append(f"row {row}: {zone!r}")
            continue
        variables = {name: cells[i] if i < len(cells) else "" for i, name in enumerate(columns)
                     if i not in (phone_at, zone_at)}
        empty = sorted(name for name in required if name in variables and not variables[name].strip())
        if empty:
            incomplete.append(f"row {row} ({', '.join(empty)})")
        result.contacts.append(Contact(row=row, phone=phone, timezone=zone or zone_of(phone, default_timezone),
                                       variables=variables))
    if bad_zones:
        raise CampaignError(source, TIMEZONE, "expected IANA time zones such as America/New_York, got "
                                              + "; ".join(bad_zones))
    if incomplete:
        rows = "1 row has" if len(incomplete) == 1 else f"{len(incomplete)} rows have"
        raise CampaignError(source, "", f"{rows} no value for what the persona says: " + "; ".join(incomplete))
    return result


def _decode(raw: bytes | str, source: str) -> str:
    if isinstance(raw, str):
        return raw.removeprefix("\ufeff")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        row = raw.count(b"\n", 0, exc.start) + 1
        raise CampaignError(source, f"row {row}", f"not UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                                                  "save the file as CSV UTF-8") from None


def _records(text: str, source: str) -> list[list[str]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        return list(reader)
    except csv.Error as exc:
        raise CampaignError(source, f"row {reader.line_num}", f"not readable as CSV: {exc}") from None


def _column_index(columns: list[str], source: str) -> tuple[int, int | None]:
    lowered = [c.lower() for c in columns]
    for i, name in enumerate(lowered):
        if name and name in lowered[:i]:
            raise CampaignError(source, "row 1", f"column {columns[i]!r} appears twice")
    taken = [c for c in columns if c.lower() in RESULT_COLUMNS]
    if taken:
        raise CampaignError(source, "row 1", f"column {taken[0]!r} is a name the campaign's results use "
                                             f"({', '.join(RESULT_COLUMNS)}): rename it")
    if PHONE not in lowered:
        raise CampaignError(source, "row 1", f"no {PHONE!r} column (columns found: "
                                             f"{', '.join(repr(c) for c in columns)})")
    return lowered.index(PHONE), lowered.index(TIMEZONE) if TIMEZONE in lowered else None


def normalise(value: str, default_region: str) -> tuple[str | None, str]:
    """A phone number as people write it → (E.164, "") or (None, why not). Beside the default region's own
    international prefix (011 in the US, 0011 in Australia), 00 is taken as one: most of the world dials it."""
    text = value.strip()
    if not text:
        return None, "no phone number"
    e164, problem = _e164(text, default_region)
    if e164 is None and text.startswith("00"):
        e164 = _e164("+" + text[2:], default_region)[0]
    return (e164, "") if e164 else (None, problem)


def _e164(text: str, region: str) -> tuple[str | None, str]:
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        return None, f"not a phone number ({str(exc).split(') ', 1)[-1]})"
    if not phonenumbers.is_possible_number(number):
        return None, "not a possible phone number (wrong length)"
    if not phonenumbers.is_valid_number(number):
        return None, "not a valid phone number (no such number range)"
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164), ""


def zone_of(phone: str, default_timezone: str) -> str:
    """The time zone of a number when its range lies in exactly one, else ``default_timezone``."""
    zones = number_zones.time_zones_for_number(phonenumbers.parse(phone))
    if len(zones) == 1 and zones[0] != number_zones.UNKNOWN_TIMEZONE and valid_zone(zones[0]):
        return zones[0]
    return default_timezone
