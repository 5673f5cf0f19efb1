"""Campaign YAML → CampaignSpec: defaults, the shipped example, and errors that name file and field."""

from datetime import datetime, time, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from voicebot.campaigns.definition import (CampaignError, CampaignSpec, RetryRule, VoicemailPolicy, check_against,
                                           load_campaign, parse_duration, read_campaign, required_variables)
from voicebot.config import ConfigError
from voicebot.dialplan import load_dialplan

REPO = Path(__file__).resolve().parent.parent

MINIMAL = {"name": "x", "persona": "acme-reminders", "carrier": "twilio", "from": ["+15550002000"],
           "default_timezone": "America/New_York"}


def read(**changes) -> CampaignSpec:
    data = {**MINIMAL, **changes}
    return read_campaign({k: v for k, v in data.items() if v is not None}, "campaigns/x.yaml", Path("/camp"))


def refused(**changes) -> str:
    with pytest.raises(CampaignError) as info:
        read(**changes)
    return str(info.value)


def test_shipped_example_loads_and_fits_the_shipped_dialplan():
    spec = load_campaign(REPO / "dialplans/campaigns/dental-reminders.yaml")
    assert spec.name == "dental-reminders" and spec.carrier == "twilio"
    assert spec.from_numbers == ("+15550002000", "+15550002001")
    assert spec.contacts == REPO / "dialplans/campaigns/contacts.csv"
    assert spec.window.days == frozenset({0, 1, 2, 3, 4})
    assert (spec.window.start, spec.window.end) == (time(9), time(20))
    assert spec.retry["busy"] == RetryRule(retries=3, after=timedelta(minutes=20))
    assert spec.retry["voicemail"] == RetryRule(retries=1, after=timedelta(days=1))
    assert spec.voicemail.action == "leave_message" and "{first_name}" in spec.voicemail.message
    assert spec.outcomes == ("confirmed", "reschedule", "not_interested", "wrong_number")
    dialplan = load_dialplan(REPO / "dialplans")
    assert check_against(spec, dialplan) == []
    assert required_variables(spec, dialplan.named("acme-reminders")) == {"first_name", "appointment"}


def test_defaults_of_a_minimal_definition():
    spec = read()
    assert spec.contacts is None and spec.default_region == "US"
    assert spec.max_concurrent_calls == 10 and spec.calls_per_second == 1.0 and spec.ring_timeout_s == 30
    assert spec.window.days == frozenset(range(7))
    assert spec.window.start == time(0) and spec.window.end == time.max      # every day, all day
    assert spec.retry == {} and spec.voicemail is None and spec.outcomes == ()
    assert spec.starts_at is None and spec.ends_at is None and spec.source == "campaigns/x.yaml"


def test_json_round_trip_keeps_every_field():
    spec = read(contacts="list.csv", window={"days": ["sat", "sun"], "start": "10:30", "end": "24:00"},
                retry={"no-answer": {"retries": 2, "after": "90s"}}, ring_timeout="45s",
                voicemail={"action": "hang_up"}, outcomes=["ok"], calls_per_second=0.5,
                starts_at="2026-12-01T09:00:00Z", ends_at=datetime(2026, 12, 24, tzinfo=timezone.utc))
    assert spec.contacts == Path("/camp/list.csv")
    assert spec.starts_at == datetime(2026, 12, 1, 9, tzinfo=timezone.utc)
    again = CampaignSpec.from_json(yaml.safe_load(yaml.safe_dump(spec.to_json())))   # through text, as stored
    assert again == spec
    assert again.window.end == time.max and again.voicemail == VoicemailPolicy("hang_up", None)


def test_durations():
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("20m") == timedelta(minutes=20)
    assert parse_duration("2h") == timedelta(hours=2)
    assert parse_duration("1d") == timedelta(days=1)
    for bad in ("2 hours", "1.5h", "h", "10", "-1m", ""):
        with pytest.raises(ValueError, match="expected a duration like 20m, 2h, 1d"):
            parse_duration(bad)


@pytest.mark.parametrize("changes, message", [
    ({"retry": {"busy": {"retries": 3, "after": "2 hours"}}},
     "campaigns/x.yaml: retry.busy.after: expected a duration like 20m, 2h, 1d, got '2 hours'"),
    ({"retry": {"answered": {"retries": 1, "after": "1h"}}},
     "campaigns/x.yaml: retry.answered: not an outcome that can be retried (one of no-answer, busy, failed, "
     "voicemail, canceled)"),
    ({"retry": {"busy": {"after": "1h"}}}, "campaigns/x.yaml: retry.busy.retries: is required but missing"),
    ({"retry": {"busy": {"retries": 1, "after": "1h", "every": 2}}},
     "campaigns/x.yaml: retry.busy.every: unknown field"),
    ({"colour": "blue"}, "campaigns/x.yaml: colour: unknown field"),
    ({"carrier": "plivo"}, "campaigns/x.yaml: carrier: expected one of twilio, telnyx, got 'plivo'"),
    ({"from": ["+15550002000", "5550002001"]}, "campaigns/x.yaml: from[1]: expected an E.164 number"),
    ({"from": ["+15550002000", "+15550002000"]}, "campaigns/x.yaml: from[1]: +15550002000 is listed twice"),
    ({"from": []}, "campaigns/x.yaml: from: needs at least one"),
    ({"from": None}, "campaigns/x.yaml: from: is required but missing"),
    ({"name": "Dental Reminders"}, "campaigns/x.yaml: name: expected lowercase letters"),
    ({"persona": None}, "campaigns/x.yaml: persona: is required but missing"),
    ({"default_region": "USA"}, "campaigns/x.yaml: default_region: expected a two-letter country code"),
    ({"default_timezone": "Mars/Olympus"}, "campaigns/x.yaml: default_timezone: expected an IANA time zone"),
    ({"default_timezone": None}, "campaigns/x.yaml: default_timezone: is required but missing"),
    ({"max_concurrent_calls": 0}, "campaigns/x.yaml: max_concurrent_calls: must be ≥ 1, got 0"),
    ({"calls_per_second": 0}, "campaigns/x.yaml: calls_per_second: must be more than 0, got 0"),
    ({"ring_timeout": "2s"}, "campaigns/x.yaml: ring_timeout: must be between 5s and 10m"),
    ({"window": {"days": ["monday"]}}, "campaigns/x.yaml: window.days[0]: expected one of mon, tue, wed"),
    ({"window": {"days": []}}, "campaigns/x.yaml: window.days: needs at least one day"),
    ({"window": {"start": "9am"}}, "campaigns/x.yaml: window.start: expected a time of day HH:MM"),
    ({"window": {"end": "24:30"}}, "campaigns/x.yaml: window.end: expected a time of day HH:MM"),
    ({"window": {"start": "20:00", "end": "09:00"}}, "campaigns/x.yaml: window.end: must be after start (20:00)"),
    ({"window": {"start": "24:00"}}, "campaigns/x.yaml: window.start: 24:00 is the end of a day"),
    ({"voicemail": {"action": "beep"}}, "campaigns/x.yaml: voicemail.action: expected one of leave_message, hang_up"),
    ({"voicemail": {"action": "leave_message"}}, "campaigns/x.yaml: voicemail.message: is required with action"),
    ({"voicemail": {"action": "hang_up", "message": "Hi"}}, "campaigns/x.yaml: voicemail.message: is only said"),
    ({"voicemail": {"action": "leave_message", "message": "Hi {first name}"}},
     "campaigns/x.yaml: voicemail.message: {first name} is not a variable name"),
    ({"outcomes": ["Confirmed"]}, "campaigns/x.yaml: outcomes[0]: expected a name of lowercase letters"),
    ({"outcomes": ["ok", "busy"]}, "campaigns/x.yaml: outcomes[1]: 'busy' is what the dialer records by itself"),
    ({"outcomes": ["ok", "ok"]}, "campaigns/x.yaml: outcomes[1]: 'ok' is listed twice"),
    ({"starts_at": "2026-12-01T09:00:00Z", "ends_at": "2026-12-01T08:00:00Z"},
     "campaigns/x.yaml: ends_at: must be after starts_at (2026-12-01T09:00:00+00:00)"),
    ({"starts_at": "2026-12-01 09:00"}, "campaigns/x.yaml: starts_at: needs a time zone"),
    ({"ends_at": "next week"}, "campaigns/x.yaml: ends_at: expected a date and time such as 2026-12-01T09:00:00Z"),
])
def test_errors_name_file_and_field(changes, message):
    assert refused(**changes).startswith(message)


def test_an_unquoted_time_read_by_yaml_as_a_number_is_explained(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(MINIMAL) + "window: {start: \"09:00\", end: 20:00}\n")
    with pytest.raises(CampaignError) as info:
        load_campaign(path)
    assert str(info.value).startswith(f"{path}: window.end: expected a time in quotes such as \"20:00\"")
    assert "reads it as the number 1200" in str(info.value)


def test_file_errors_are_campaign_errors_and_config_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(CampaignError, match=rf"^{path}: line 2, column 1: invalid YAML") as info:
        load_campaign(path)
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)
    with pytest.raises(CampaignError, match="cannot read"):
        load_campaign(tmp_path / "missing.yaml")
    path.write_text("- a list\n")
    with pytest.raises(CampaignError, match=r": \(top level\): expected a mapping"):
        load_campaign(path)


def _dialplan(tmp_path: Path, instructions: str, greeting: str):
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({
        "name": "acme-reminders", "numbers": ["+15550002999"], "language": "en", "voice": "v",
        "instructions": instructions, "greeting": greeting}))
    return load_dialplan(tmp_path)


def test_check_against_the_dialplan(tmp_path):
    dialplan = _dialplan(tmp_path, "Call {first_name} about {appointment}.", "Hi {first_name}!")
    spec = read(voicemail={"action": "leave_message", "message": "Call {clinic} back."})
    assert check_against(spec, dialplan) == []
    assert required_variables(spec, dialplan.named("acme-reminders")) == {"first_name", "appointment", "clinic"}

    problems = check_against(read(persona="nobody"), dialplan)
    assert problems == ["campaigns/x.yaml: persona: no persona named 'nobody' in the dialplan (known: acme-reminders)"]

    broken = _dialplan(tmp_path, "Reply as JSON: {\"ok\": true}", "Hi {first_name}!")
    problems = check_against(spec, broken)
    assert len(problems) == 1 and problems[0].startswith(f"{tmp_path / 'p.yaml'}: instructions: ")
    with pytest.raises(ValueError):
        required_variables(spec, broken.named("acme-reminders"))
