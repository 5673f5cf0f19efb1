"""Campaign files under hostile edits: the definition YAML (voicebot/campaigns/definition.py ``load_campaign``) and
the contact list CSV (voicebot/campaigns/contacts.py ``read_contacts``), as spreadsheets and people write them.

Properties: a definition gives a spec or a ``CampaignError`` naming the file and what is wrong, and a spec that
loads survives its round trip through the database's JSON; a contact list gives contacts -- each an E.164
number with a real IANA time zone -- and skipped rows with their reason, or a ``CampaignError``; never
anything else."""

from __future__ import annotations

import csv
import io
import math
import tempfile
from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

from voicebot.campaigns.contacts import read_contacts
from voicebot.campaigns.definition import CampaignError, CampaignSpec, load_campaign, valid_zone

from test_fuzz_config import yaml_files

DEFINITION = {
    "name": "fuzz-reminders", "persona": "acme-reminders", "carrier": "twilio", "from": ["+12125550100"],
    "contacts": "contacts.csv", "default_region": "US", "default_timezone": "America/New_York",
    "max_concurrent_calls": 3, "calls_per_second": 2.0, "ring_timeout": "30s",
    "window": {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "20:00"},
    "retry": {"no-answer": {"retries": 2, "after": "2h"}, "busy": {"retries": 1, "after": "20m"}},
    "voicemail": {"action": "leave_message", "message": "Hi {first_name}, please call us back."},
    "outcomes": ["confirmed", "reschedule"],
    "starts_at": "2026-12-01T09:00:00Z", "ends_at": "2026-12-31T18:00:00+01:00",
}


@given(yaml_files(DEFINITION))
@example(b"name: x\npersona: p\ncarrier: twilio\nfrom: ['+12125550100']\ndefault_timezone: UTC\n"
         b"ring_timeout: 99999999999d\n")                                  # timedelta overflows
@example(b"name: x\npersona: p\ncarrier: twilio\nfrom: ['+12125550100']\ndefault_timezone: UTC\n"
         b"retry: {busy: {retries: 1, after: 999999999999999d}}\n")
@example(b"name: x\npersona: p\ncarrier: twilio\nfrom: ['+12125550100']\ncalls_per_second: .nan\n"
         b"default_timezone: UTC\n")
@example("name: x\npersona: p\ncarrier: twilio\nfrom: ['+12125550100']\ndefault_timezone: "
         f"{'Europe/' * 60}Berlin\n".encode())                             # a zone name past the file name limit
def test_a_campaign_definition_loads_or_names_the_field_at_fault(text) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "campaign.yaml"
        path.write_bytes(text)
        try:
            spec = load_campaign(path)
        except CampaignError as exc:
            assert exc.source == str(path) and exc.problem.strip(), exc
            return
    assert not math.isnan(spec.calls_per_second)
    assert valid_zone(spec.default_timezone)
    assert CampaignSpec.from_json(spec.to_json()) == spec


# -- contact lists -----------------------------------------------------------------------------------------

PHONES = ["(212) 555-0101", "+1 202 555 0143", "2125550101", "+44 20 7946 0000", "0049 30 901820", "555-12",
          "not a number", "", "+", "00", "+999999999999999999999", "1" * 300, "+1 212 555 0101 ext. 7", "٠١٢٣",
          "=HYPERLINK(\"x\")", "\x00"]
ZONES = ["", "America/Chicago", "Europe/Berlin", "UTC", "Nowhere/Else", "America", "../../etc/passwd", "/etc/localtime",
         "Europe/" * 60 + "Berlin", "a" * 300, "America/New_York\x00", " Asia/Tokyo ", "EST5EDT", "posix/UTC", "."]
CELLS = st.one_of(st.sampled_from(PHONES + ZONES + ["Ann", "Bob", "Monday 10:00", ""]), st.text(max_size=12))


@st.composite
def contact_lists(draw) -> str | bytes:
    """A CSV as spreadsheets export them: a header, rows with too few or too many cells, quoting, BOMs, and
    sometimes text that is not UTF-8 or not CSV at all."""
    header = draw(st.permutations(["phone", "timezone", "first_name", "appointment"]).map(list)
                  .flatmap(lambda cols: st.lists(st.sampled_from(cols + ["Phone", "outcome", "", "x"]), min_size=1,
                                                 max_size=5).map(lambda extra: cols[:draw(st.integers(1, 4))] + extra
                                                                 if draw(st.booleans()) else cols)))
    rows = draw(st.lists(st.lists(CELLS, max_size=len(header) + 1), max_size=6))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=draw(st.sampled_from(["\n", "\r\n", "\r"])))
    writer.writerow(header)
    writer.writerows(rows)
    text = buffer.getvalue()
    kind = draw(st.sampled_from(["text", "text", "bytes", "bom", "broken"]))
    if kind == "bytes":
        return text.encode("utf-8")
    if kind == "bom":
        return b"\xef\xbb\xbf" + text.encode("utf-8")
    if kind == "broken":
        return draw(st.sampled_from([b"phone\n\xff\xfe555\n", 'phone\n"unclosed\n', "phone\n" + "x" * 200000,
                                     "\x00phone\n+12125550101\n", b"", "\n\n", "phone,phone\n1,2\n"]))
    return text


@given(contact_lists(), st.sets(st.sampled_from(["first_name", "appointment", "phone", "zone"])),
       st.sampled_from(["US", "GB", "DE"]), st.sampled_from(["America/Chicago", "Europe/Berlin"]))
@example("phone,timezone\n+12125550101," + "Europe/" * 60 + "Berlin\n", set(), "US", "America/Chicago")
@example("phone,timezone\n+12125550101,America/New_York\x00\n", set(), "US", "America/Chicago")
def test_a_contact_list_gives_contacts_or_a_campaign_error(data, required, region, zone) -> None:
    try:
        contacts = read_contacts(data, default_region=region, default_timezone=zone, required=required,
                                 source="contacts.csv")
    except CampaignError as exc:
        assert exc.source == "contacts.csv" and exc.problem.strip(), exc
        return
    phones = [c.phone for c in contacts.contacts]
    assert len(set(phones)) == len(phones)
    for contact in contacts.contacts:
        assert contact.phone.startswith("+") and contact.phone[1:].isdigit() and contact.phone.isascii()
        assert valid_zone(contact.timezone), contact
        assert all(name in contact.variables and contact.variables[name].strip()
                   for name in required - {"phone", "timezone"}), contact
    for problem in contacts.skipped:
        assert problem.row >= 2 and problem.problem.strip()


# -- the same texts sent to the admin API (POST /api/campaigns) ------------------------------------------------

class Store:
    """Where a created campaign would go: storing is not what is fuzzed here."""

    async def create_campaign(self, spec, contacts, *, now) -> int:
        return 1


@given(yaml_files(DEFINITION), contact_lists())
@example(b"name: x\npersona: acme-reminders\ncarrier: twilio\nfrom: ['+12125550100']\ndefault_timezone: UTC\n"
         b"starts_at: 2026-13-45T00:00:00Z\n", "phone\n+12125550101\n")     # PyYAML's date constructor: ValueError
@example(b"name: !!int x\n", "phone\n+12125550101\n")
def test_a_campaign_sent_to_the_api_is_created_or_invalid(definition, contacts) -> None:
    """The API takes the definition and the contacts as texts (JSON strings): the campaign is created, or the
    request is refused as Invalid (400) naming the text at fault -- never another exception (a 500)."""
    import asyncio

    from voicebot.campaigns import manage
    from voicebot.dialplan import load_dialplan

    from conftest import REPO_DIALPLANS

    as_text = (lambda data: data.decode("utf-8", "replace") if isinstance(data, bytes) else data)
    try:
        created = asyncio.run(manage.create_from_text(Store(), as_text(definition), as_text(contacts),
                                                      load_dialplan(REPO_DIALPLANS)))
    except manage.Invalid as exc:
        assert str(exc).startswith(("request:definition", "request:contacts")) or "persona" in str(exc), str(exc)
        return
    assert created.contacts >= 1 and created.name


# -- a do-not-call import (POST /api/dnc/import, voicebot dnc import) -----------------------------------------

@given(contact_lists(), st.sampled_from(["US", "GB", "DE"]))
@example("\x00phone\n+12125550101\n", "US")                              # csv: "line contains NUL"
@example("phone\n" + "x" * 200000 + "\n", "US")                          # csv: "field larger than field limit"
@example('phone\n"+1212555\x000101"\n', "US")
def test_a_do_not_call_import_gives_numbers_and_skipped_rows_or_invalid(data, region) -> None:
    from voicebot.campaigns import manage

    try:
        numbers, problems = manage.read_numbers(data, region=region, source="dnc.csv")
    except manage.Invalid as exc:
        assert str(exc).startswith("dnc.csv: ") and str(exc)[9:].strip(), str(exc)
        return
    for number in numbers:
        assert number.startswith("+") and number[1:].isdigit() and number.isascii(), number
    for problem in problems:
        assert problem.row >= 1 and problem.problem.strip()
