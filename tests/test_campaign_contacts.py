"""Contact lists: numbers in common formats → E.164, time zones, bad and repeated rows reported and skipped,
lists the campaign cannot use refused with the file and row."""

from pathlib import Path

import pytest

from voicebot.campaigns.contacts import Contact, RowProblem, read_contacts
from voicebot.campaigns.definition import CampaignError

REPO = Path(__file__).resolve().parent.parent


def read(text, *, required=frozenset(), region="US", zone="America/Chicago", source="contacts.csv"):
    return read_contacts(text, default_region=region, default_timezone=zone, required=set(required), source=source)


def refused(text, **kwargs) -> str:
    with pytest.raises(CampaignError) as info:
        read(text, **kwargs)
    return str(info.value)


def test_shipped_example_list_has_four_contacts_in_four_zones():
    contacts = read_contacts(REPO / "dialplans/campaigns/contacts.csv", default_region="US",
                             default_timezone="America/New_York", required={"first_name", "appointment"})
    assert contacts.skipped == [] and contacts.columns == ["phone", "first_name", "appointment"]
    assert [(c.row, c.phone, c.timezone) for c in contacts.contacts] == [
        (2, "+12125550100", "America/New_York"), (3, "+442079460958", "Europe/London"),
        (4, "+81312345678", "Asia/Tokyo"), (5, "+4930901820", "Europe/Berlin")]
    assert contacts.contacts[0].variables == {"first_name": "Ann", "appointment": "Tuesday, December 8 at 10:00"}


@pytest.mark.parametrize("written, region, e164", [
    ("(212) 555-0100", "US", "+12125550100"),
    ("212.555.0100", "US", "+12125550100"),
    ("1-212-555-0100", "US", "+12125550100"),
    ("+1 (212) 555-0100", "DE", "+12125550100"),
    ("011 44 20 7946 0958", "US", "+442079460958"),     # the US international prefix
    ("+44 20 7946 0958", "US", "+442079460958"),
    ("020 7946 0958", "GB", "+442079460958"),            # national format, default region GB
    ("0049 30 901820", "US", "+4930901820"),            # 00: the international prefix of most countries
    ("0049 30 901820", "DE", "+4930901820"),
    ("0011 44 20 7946 0958", "AU", "+442079460958"),   # Australia's international prefix
    ("0044 20 7946 0958", "AU", "+442079460958"),
    ("030 901820", "DE", "+4930901820"),
    ("+81 3-1234-5678", "US", "+81312345678"),
])
def test_numbers_in_common_formats_become_e164(written, region, e164):
    contacts = read(f'phone\n"{written}"\n', region=region)
    assert contacts.skipped == [] and [c.phone for c in contacts.contacts] == [e164]


def test_bad_and_repeated_numbers_are_reported_by_row_and_skipped():
    text = ("phone,first_name\n"
            "(212) 555-0100,Ann\n"        # row 2
            "not a number,Bob\n"          # row 3
            "\n"                          # row 4: an empty line, skipped silently
            "+1 555 000 2000,Cy\n"        # row 5: no such range
            "212-555-01,Di\n"             # row 6: too short
            ",Ed\n"                       # row 7: no number
            "+1 212 555 0100,Ann again\n"  # row 8: row 2 in another format
            "+44 20 7946 0958,Flo\n"      # row 9
            "+44 20 7946 0959,Gus,extra\n")  # row 10: more cells than columns
    contacts = read(text)
    assert [(c.row, c.phone) for c in contacts.contacts] == [(2, "+12125550100"), (9, "+442079460958")]
    problems = {p.row: p for p in contacts.skipped}
    assert sorted(problems) == [3, 5, 6, 7, 8, 10]
    assert problems[3].value == "not a number" and problems[3].problem.startswith("not a phone number")
    assert problems[5] == RowProblem(5, "+1 555 000 2000", "not a valid phone number (no such number range)")
    assert problems[6].value == "212-555-01" and "not a possible phone number" in problems[6].problem
    assert problems[7] == RowProblem(7, "", "no phone number")
    assert problems[8] == RowProblem(8, "+1 212 555 0100", "+12125550100 is already on row 2")
    assert problems[10].problem == "3 cells but the header names 2 columns"


def test_time_zone_from_the_column_else_the_number_else_the_default():
    text = ("phone,timezone,name\n"
            "+1 212 555 0100,America/Los_Angeles,given\n"   # the column wins over the number's zone
            "+1 212 555 0101,,from number\n"
            "+61 2 9374 4000,,from number\n"
            "+1 800 234 5678,,toll-free: many zones\n"
            "+61 8 9212 3456,,Adelaide or Perth\n")
    contacts = read(text, zone="America/Chicago")
    assert [c.timezone for c in contacts.contacts] == [
        "America/Los_Angeles", "America/New_York", "Australia/Sydney", "America/Chicago", "America/Chicago"]
    assert all(c.variables.keys() == {"name"} for c in contacts.contacts)   # phone and timezone are not variables


def test_a_bad_time_zone_refuses_the_list_naming_every_row():
    message = refused("phone,timezone\n+12125550100,Mars/Olympus\n+12125550101,UTC\n+12125550102,EST5\n")
    assert message.startswith("contacts.csv: timezone: expected IANA time zones")
    assert "row 2: 'Mars/Olympus'" in message and "row 4: 'EST5'" in message and "row 3" not in message


def test_utf8_with_a_byte_order_mark_and_crlf_lines(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffPhone,First_Name\r\n(212) 555-0100,Zoë\r\n".encode("utf-8"))
    contacts = read_contacts(path, default_region="US", default_timezone="UTC", required={"First_Name"})
    assert contacts.columns == ["Phone", "First_Name"]
    assert contacts.contacts == [Contact(row=2, phone="+12125550100", timezone="America/New_York",
                                         variables={"First_Name": "Zoë"})]


def test_other_encodings_are_refused_naming_the_row_and_byte(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("phone,name\n+12125550100,Ann\n+12125550101,Zoë\n".encode("latin-1"))
    with pytest.raises(CampaignError) as info:
        read_contacts(path, default_region="US", default_timezone="UTC")
    offset = path.read_bytes().index(b"\xeb")
    assert str(info.value) == (f"{path}: row 3: not UTF-8 (byte 0xeb at offset {offset}); "
                               "save the file as CSV UTF-8")


def test_a_list_without_a_phone_column_is_refused_listing_the_columns_found():
    assert refused("number;first_name\n+12125550100;Ann\n") == (
        "contacts.csv: row 1: no 'phone' column (columns found: 'number;first_name')")
    assert refused("mobile,first_name\n+12125550100,Ann\n").endswith("(columns found: 'mobile', 'first_name')")
    assert refused("") == "contacts.csv: row 1: expected a header row naming the columns, with a 'phone' column"
    assert refused("phone,name,Name\n") == "contacts.csv: row 1: column 'Name' appears twice"


def test_rows_missing_a_variable_the_persona_needs_refuse_the_list_naming_every_row():
    text = ("phone,first_name,appointment\n"
            "+12125550100,Ann,Monday\n"
            "+12125550101,,Tuesday\n"       # row 3
            "+12125550102,Cy,Wed\n"
            "+12125550103,  ,\n"            # row 5: blank is missing too
            "bad,,\n")                      # row 6: skipped for its number, so not counted
    message = refused(text, required={"first_name", "appointment"})
    assert message == ("contacts.csv: 2 rows have no value for what the persona says: "
                       "row 3 (first_name); row 5 (appointment, first_name)")
    assert refused(text, required={"appointment"}) == (
        "contacts.csv: 1 row has no value for what the persona says: row 5 (appointment)")
    assert read(text).contacts[1].variables == {"first_name": "", "appointment": "Tuesday"}   # nothing required


def test_a_variable_with_no_column_is_refused_naming_the_columns():
    assert refused("phone,first_name\n+12125550100,Ann\n", required={"first_name", "appointment"}) == (
        "contacts.csv: row 1: the persona uses {appointment} but there is no such column "
        "(columns found: phone, first_name)")


def test_text_bytes_and_paths_read_alike(tmp_path):
    text = "phone,first_name\n(212) 555-0100,\"Ann, Jr.\"\n"
    path = tmp_path / "c.csv"
    path.write_text(text, encoding="utf-8")
    lists = [read(text), read(text.encode()), read_contacts(path, default_region="US", default_timezone="UTC")]
    assert all(c.contacts == lists[0].contacts for c in lists)
    assert lists[0].contacts[0].variables == {"first_name": "Ann, Jr."}
    with pytest.raises(CampaignError, match=f"^{tmp_path / 'gone.csv'}: cannot read"):
        read_contacts(tmp_path / "gone.csv", default_region="US", default_timezone="UTC")


def test_a_column_named_like_a_result_column_is_refused():
    with pytest.raises(CampaignError, match="column 'note' is a name the campaign's results use"):
        read_contacts("phone,first_name,note\n+12125550101,Ann,VIP\n", default_region="US",
                      default_timezone="America/New_York")
