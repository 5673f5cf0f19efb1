"""A campaign's YAML file → a validated ``CampaignSpec``; errors name the file and the field."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers

from ..config import ConfigError, Fields, load_yaml
from ..dialplan import E164, Dialplan, Persona
from .templates import template_fields


class CampaignError(ConfigError, ValueError):
    """A campaign file or contact list is wrong; the message names the file, the field (or the row) and what was
    expected. A ConfigError, so ``voicebot check`` and the CLI report it like any configuration error."""


CARRIERS = ("twilio", "telnyx")
RETRYABLE = ("no-answer", "busy", "failed", "voicemail", "canceled")
# What an attempt can end as, and what an export shows for a contact never dialed: a campaign's own outcomes
# (set by the bot) are shown in the same column, so they must not look like one of these.
ATTEMPT_OUTCOMES = ("answered", "voicemail", "no-answer", "busy", "failed", "canceled", "dnc")
RESERVED_OUTCOMES = (*ATTEMPT_OUTCOMES, "pending")
VOICEMAIL_ACTIONS = ("leave_message", "hang_up")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
OUTCOME_NAME = re.compile(r"^[a-z0-9_-]+$")
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})$")
END_OF_DAY = time.max      # a window's end of "24:00"


@dataclass(frozen=True)
class RetryRule:
    retries: int          # dials after the first one that ended this way
    after: timedelta


@dataclass(frozen=True)
class Window:
    """When contacts may be called, in each contact's own time zone: on ``days`` (0 = Monday) from ``start``
    to ``end`` (``END_OF_DAY`` for 24:00)."""

    days: frozenset[int] = frozenset(range(7))
    start: time = time(0, 0)
    end: time = END_OF_DAY


@dataclass(frozen=True)
class VoicemailPolicy:
    action: str                  # "leave_message" | "hang_up"
    message: str | None = None   # with leave_message; may use {variables}


@dataclass(frozen=True)
class CampaignSpec:
    name: str
    persona: str
    carrier: str
    from_numbers: tuple[str, ...]
    contacts: Path | None
    default_region: str
    default_timezone: str
    max_concurrent_calls: int = 10
    calls_per_second: float = 1.0
    window: Window = Window()
    retry: dict[str, RetryRule] = field(default_factory=dict)   # by outcome, from RETRYABLE
    voicemail: VoicemailPolicy | None = None
    outcomes: tuple[str, ...] = ()
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    ring_timeout_s: int = 30
    source: str = ""

    def to_json(self) -> dict:
        """A JSON-ready dict (the definition a campaign keeps in the database); ``from_json`` reads it back."""
        return {
            "name": self.name, "persona": self.persona, "carrier": self.carrier,
            "from_numbers": list(self.from_numbers),
            "contacts": None if self.contacts is None else str(self.contacts),
            "default_region": self.default_region, "default_timezone": self.default_timezone,
            "max_concurrent_calls": self.max_concurrent_calls, "calls_per_second": self.calls_per_second,
            "window": {"days": sorted(self.window.days), "start": _clock_text(self.window.start),
                       "end": _clock_text(self.window.end)},
            "retry": {outcome: {"retries": rule.retries, "after_s": rule.after.total_seconds()}
                      for outcome, rule in self.retry.items()},
            "voicemail": None if self.voicemail is None else {"action": self.voicemail.action,
                                                              "message": self.voicemail.message},
            "outcomes": list(self.outcomes),
            "starts_at": None if self.starts_at is None else self.starts_at.isoformat(),
            "ends_at": None if self.ends_at is None else self.ends_at.isoformat(),
            "ring_timeout_s": self.ring_timeout_s,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, d: dict) -> CampaignSpec:
        window = d["window"]
        voicemail = d.get("voicemail")
        return cls(
            name=d["name"], persona=d["persona"], carrier=d["carrier"], from_numbers=tuple(d["from_numbers"]),
            contacts=None if d.get("contacts") is None else Path(d["contacts"]),
            default_region=d["default_region"], default_timezone=d["default_timezone"],
            max_concurrent_calls=d["max_concurrent_calls"], calls_per_second=d["calls_per_second"],
            window=Window(days=frozenset(window["days"]), start=_clock(window["start"]),
                          end=_clock(window["end"])),
            retry={outcome: RetryRule(retries=rule["retries"], after=timedelta(seconds=rule["after_s"]))
                   for outcome, rule in d.get("retry", {}).items()},
            voicemail=None if voicemail is None else VoicemailPolicy(voicemail["action"], voicemail.get("message")),
            outcomes=tuple(d.get("outcomes", ())),
            starts_at=None if d.get("starts_at") is None else datetime.fromisoformat(d["starts_at"]),
            ends_at=None if d.get("ends_at") is None else datetime.fromisoformat(d["ends_at"]),
            ring_timeout_s=d.get("ring_timeout_s", 30),
            source=d.get("source", ""),
        )


def parse_duration(text: str) -> timedelta:
    """``"90s"``, ``"20m"``, ``"2h"``, ``"1d"`` → a timedelta; ValueError for anything else."""
    match = _DURATION.match(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"expected a duration like 20m, 2h, 1d, got {text!r}")
    try:
        return timedelta(**{_UNITS[match[2]]: int(match[1])})
    except OverflowError:
        raise ValueError(f"duration {text!r} is longer than a timedelta holds") from None


def load_campaign(path: str | Path) -> CampaignSpec:
    path = Path(path)
    try:
        data = load_yaml(path)
    except ConfigError as exc:
        raise CampaignError(exc.source, exc.field_path, exc.problem) from None
    return read_campaign(data, str(path), path.parent)


def read_campaign(data: dict, source: str, base_dir: Path) -> CampaignSpec:
    """A campaign definition (the YAML file's mapping) → spec; ``contacts`` is taken relative to ``base_dir``."""
    try:
        return _read(Fields(source, data), source, Path(base_dir))
    except CampaignError:
        raise
    except ConfigError as exc:
        raise CampaignError(exc.source, exc.field_path, exc.problem) from None


def _read(f: Fields, source: str, base_dir: Path) -> CampaignSpec:
    name = f.get("name", str)
    if not NAME.match(name):
        raise f.error("name", f"expected lowercase letters, digits, - and _ (at most 64, starting with a letter "
                              f"or digit), got {name!r}")
    persona = f.get("persona", str)
    if not persona.strip():
        raise f.error("persona", "must name a persona of the dialplan")
    carrier = f.get("carrier", str, choices=CARRIERS)
    from_numbers = f.get("from", list)
    if not from_numbers:
        raise f.error("from", "needs at least one of your carrier numbers (E.164, such as \"+15551230001\")")
    for i, number in enumerate(from_numbers):
        if not isinstance(number, str) or not E164.match(number):
            raise f.error(f"from[{i}]", f"expected an E.164 number such as \"+15551230001\" (quoted in YAML), "
                                        f"got {number!r}")
        if number in from_numbers[:i]:
            raise f.error(f"from[{i}]", f"{number} is listed twice")
    contacts = f.get("contacts", str, None)
    region = f.get("default_region", str, "US")
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise f.error("default_region", f"expected a two-letter country code such as US, GB, DE, got {region!r}")
    default_timezone = f.get("default_timezone", str)
    _check_zone(f, "default_timezone", default_timezone)
    max_concurrent = f.get("max_concurrent_calls", int, 10, minimum=1)
    rate = f.get("calls_per_second", float, 1.0)
    if rate <= 0:
        raise f.error("calls_per_second", f"must be more than 0, got {rate:g}")
    ring_timeout = _duration(f, "ring_timeout", "30s")
    if not timedelta(seconds=5) <= ring_timeout <= timedelta(seconds=600) or ring_timeout.microseconds:
        raise f.error("ring_timeout", "must be between 5s and 10m (carriers ring at most 600 s)")
    starts_at = _instant(f, "starts_at")
    ends_at = _instant(f, "ends_at")
    if starts_at and ends_at and ends_at <= starts_at:
        raise f.error("ends_at", f"must be after starts_at ({starts_at.isoformat()}), got {ends_at.isoformat()}")
    spec = CampaignSpec(
        name=name, persona=persona, carrier=carrier, from_numbers=tuple(from_numbers),
        contacts=None if contacts is None else base_dir / contacts,
        default_region=region, default_timezone=default_timezone,
        max_concurrent_calls=max_concurrent, calls_per_second=rate,
        window=_window(f.section("window")),
        retry=_retry(f.section("retry")),
        voicemail=_voicemail(f),
        outcomes=_outcomes(f),
        starts_at=starts_at, ends_at=ends_at,
        ring_timeout_s=int(ring_timeout.total_seconds()),
        source=source,
    )
    f.reject_unknown()
    return spec


def _duration(f: Fields, key: str, default: str) -> timedelta:
    value = f.get(key, (str, int), default)
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise f.error(key, str(exc)) from None


def _check_zone(f: Fields, key: str, name: str) -> None:
    if not valid_zone(name):
        raise f.error(key, f"expected an IANA time zone such as America/New_York or Europe/Berlin, got {name!r}")


def valid_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):    # OSError: "America" is a folder; a name too long
        return False
    return True


def _instant(f: Fields, key: str) -> datetime | None:
    value = f.get(key, (str, datetime), None)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise f.error(key, f"expected a date and time such as 2026-12-01T09:00:00Z, got {value!r}") from None
    if value is not None and value.tzinfo is None:
        raise f.error(key, f"needs a time zone (Z for UTC, or an offset like +01:00), got {value.isoformat()}")
    return value


def _window(f: Fields) -> Window:
    days = f.get("days", list, list(DAYS))
    if not days:
        raise f.error("days", "needs at least one day (mon, tue, wed, thu, fri, sat, sun)")
    for i, day in enumerate(days):
        if day not in DAYS:
            raise f.error(f"days[{i}]", f"expected one of {', '.join(DAYS)}, got {day!r}")
    start = _time_of_day(f, "start", "00:00")
    end = _time_of_day(f, "end", "24:00")
    if start == END_OF_DAY:
        raise f.error("start", "24:00 is the end of a day; a window starts at 23:59 at the latest")
    if end <= start:
        raise f.error("end", f"must be after start ({_clock_text(start)}) on the same day, got {_clock_text(end)}")
    f.reject_unknown()
    return Window(days=frozenset(DAYS.index(day) for day in days), start=start, end=end)


def _time_of_day(f: Fields, key: str, default: str) -> time:
    value = f.get(key, (str, int), default)
    if isinstance(value, int):
        # YAML 1.1 reads an unquoted 20:00 as the sexagesimal number 1200.
        raise f.error(key, f"expected a time in quotes such as \"20:00\" (unquoted, YAML reads it as the "
                           f"number {value}), got {value}")
    try:
        return _clock(value)
    except ValueError:
        raise f.error(key, f"expected a time of day HH:MM between 00:00 and 24:00, got {value!r}") from None


def _clock(text: str) -> time:
    match = _CLOCK.match(text.strip())
    if not match:
        raise ValueError(text)
    hour, minute = int(match[1]), int(match[2])
    if (hour, minute) == (24, 0):
        return END_OF_DAY
    return time(hour, minute)


def _clock_text(value: time) -> str:
    return "24:00" if value == END_OF_DAY else value.strftime("%H:%M")


def _retry(f: Fields) -> dict[str, RetryRule]:
    rules: dict[str, RetryRule] = {}
    for outcome in list(f.data):
        if outcome not in RETRYABLE:
            raise f.error(str(outcome), f"not an outcome that can be retried (one of {', '.join(RETRYABLE)})")
        rule = f.section(outcome)
        rules[outcome] = RetryRule(retries=rule.get("retries", int, minimum=0, maximum=100),
                                   after=_duration(rule, "after", ...))
        rule.reject_unknown()
    return rules


def _voicemail(f: Fields) -> VoicemailPolicy | None:
    vm = f.section("voicemail")
    if not vm.data:
        return None
    action = vm.get("action", str, choices=VOICEMAIL_ACTIONS)
    message = vm.get("message", str, None)
    if action == "leave_message":
        if not message or not message.strip():
            raise vm.error("message", "is required with action: leave_message (what the bot says after the beep)")
        try:
            template_fields(message)
        except ValueError as exc:
            raise vm.error("message", str(exc)) from None
    elif message is not None:
        raise vm.error("message", "is only said with action: leave_message; action hang_up leaves no message")
    vm.reject_unknown()
    return VoicemailPolicy(action=action, message=message)


def _outcomes(f: Fields) -> tuple[str, ...]:
    outcomes = f.get("outcomes", list, [])
    for i, outcome in enumerate(outcomes):
        key = f"outcomes[{i}]"
        if not isinstance(outcome, str) or not OUTCOME_NAME.match(outcome):
            raise f.error(key, f"expected a name of lowercase letters, digits, - and _, got {outcome!r}")
        if outcome in RESERVED_OUTCOMES:
            raise f.error(key, f"{outcome!r} is what the dialer records by itself "
                               f"({', '.join(RESERVED_OUTCOMES)}); choose another name")
        if outcome in outcomes[:i]:
            raise f.error(key, f"{outcome!r} is listed twice")
    return tuple(outcomes)


def _persona_texts(spec: CampaignSpec, persona: Persona) -> dict[str, str | None]:
    """The texts a campaign call fills with the contact's variables, by where they come from."""
    return {
        f"{persona.source}: instructions": persona.instructions,
        f"{persona.source}: greeting": persona.greeting,
        f"{spec.source}: voicemail.message": spec.voicemail.message if spec.voicemail else None,
    }


def check_against(spec: CampaignSpec, dialplan: Dialplan) -> list[str]:
    """What keeps ``spec`` from running with this dialplan (empty: nothing)."""
    persona = dialplan.named(spec.persona)
    if persona is None:
        known = ", ".join(sorted(p.name for p in dialplan.personas))
        return [f"{spec.source}: persona: no persona named {spec.persona!r} in the dialplan (known: {known})"]
    problems = []
    for where, text in _persona_texts(spec, persona).items():
        try:
            template_fields(text)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
    return problems


def required_variables(spec: CampaignSpec, persona: Persona) -> set[str]:
    """The contact columns the persona's instructions and greeting and the voicemail message use; ValueError
    for a malformed text (``check_against`` reports those)."""
    return set().union(*(template_fields(text) for text in _persona_texts(spec, persona).values()))
