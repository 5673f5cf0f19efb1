"""A campaign as a user writes it, for the campaign CLI and API tests: a dialplan whose persona uses contact
variables, the campaign's YAML definition, its contacts' CSV (good rows, a bad number, a duplicate)."""

from __future__ import annotations

from pathlib import Path

PERSONA = """\
name: acme-reminders
numbers: ["+15550009000"]
language: en
voice: lively-girl
instructions: You remind {first_name} of the dental appointment on {appointment}. Be brief.
greeting: Hi {first_name}, this is Acme Dental calling about your appointment.
"""

DEFINITION = """\
name: {name}
persona: acme-reminders
carrier: twilio
from: ["+12125550100"]
contacts: contacts.csv
default_region: US
default_timezone: America/New_York
max_concurrent_calls: 3
calls_per_second: 2
retry:
  no-answer: {{retries: 2, after: 2h}}
voicemail: {{action: leave_message, message: "Hi {{first_name}}, Acme Dental here, please call us back."}}
outcomes: [confirmed, reschedule, wrong_number]
"""

# row 1 is the header; row 4 is not a number, row 5 repeats row 2's number in another format
CONTACTS = """\
phone,first_name,appointment,clinic
(212) 555-0101,Ana,Monday 10:00,Downtown
+1 202 555 0143,Ben,Tuesday 11:30,Uptown
555-12,Cy,Friday 09:00,Downtown
2125550101,Ana B,Monday 10:30,Downtown
+44 20 7946 0000,Dee,Thursday 15:00,London
+33 1 42 68 53 00,Eve,Friday 16:00,Paris
"""
GOOD = {"+12125550101": "Ana", "+12025550143": "Ben", "+442079460000": "Dee", "+33142685300": "Eve"}

# rows 3 and 5 lack a variable the persona needs
CONTACTS_MISSING_NAMES = """\
phone,first_name,appointment,clinic
+12125550101,Ana,Monday 10:00,Downtown
+12025550143,,Tuesday 11:30,Uptown
+442079460000,Dee,Thursday 15:00,London
+33142685300,Eve,,Paris
"""


def write_dialplan(folder: Path) -> Path:
    plans = folder / "dialplans"
    plans.mkdir(exist_ok=True)
    (plans / "acme-reminders.yaml").write_text(PERSONA, encoding="utf-8")
    return plans


def write_campaign(folder: Path, name: str = "dental-reminders", contacts: str = CONTACTS) -> Path:
    """The definition (and contacts.csv beside it); the definition's path."""
    (folder / "contacts.csv").write_text(contacts, encoding="utf-8")
    path = folder / f"{name}.yaml"
    path.write_text(DEFINITION.format(name=name), encoding="utf-8")
    return path
