"""dialplans/*.yaml → one Persona per phone number (E.164), plus the default persona."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .config import ConfigError, Fields, load_yaml

E164 = re.compile(r"^\+[1-9]\d{1,14}$")
LANGUAGES = ("zh", "en")


@dataclass(frozen=True)
class TurnDetection:
    silence_duration_ms: int = 600
    prefix_padding_ms: int = 300
    energy_awakeness_threshold: int = 2500


@dataclass(frozen=True)
class RealtimeSettings:
    model: str = "stepaudio-2.5-realtime"
    turn_detection: TurnDetection = TurnDetection()


@dataclass(frozen=True)
class BargeIn:
    enabled: bool = True
    min_speech_ms: int = 200


@dataclass(frozen=True)
class Persona:
    name: str
    source: str
    numbers: tuple[str, ...]
    language: str
    voice: str
    instructions: str
    greeting: str | None = None
    realtime: RealtimeSettings = RealtimeSettings()
    barge_in: BargeIn = BargeIn()
    max_call_seconds: int = 900
    default: bool = False


@dataclass
class Dialplan:
    personas: list[Persona]
    by_number: dict[str, Persona] = field(default_factory=dict)
    default: Persona | None = None

    def lookup(self, number: str | None) -> Persona | None:
        """The persona answering ``number``; the default persona for numbers no file names."""
        if number and number in self.by_number:
            return self.by_number[number]
        return self.default


def _persona(source: Path, data: object, prefix: str) -> Persona:
    f = Fields(source, data, prefix)
    name = f.get("name", str)
    if not name.strip():
        raise f.error("name", "must not be empty")
    numbers = f.get("numbers", list, [])
    for i, number in enumerate(numbers):
        if not isinstance(number, str) or not E164.match(number):
            raise ConfigError(source, f.path(f"numbers[{i}]"),
                              f"expected an E.164 number such as +15551230001 (quote it in YAML), got {number!r}")
    is_default = f.get("default", bool, False)
    if not numbers and not is_default:
        raise f.error("numbers", "is required (a list of E.164 numbers) unless the persona is the default")
    language = f.get("language", str, choices=LANGUAGES)
    voice = f.get("voice", str)
    instructions = f.get("instructions", str)
    greeting = f.get("greeting", str, None)

    rt = f.section("realtime")
    td = rt.section("turn_detection")
    turn_detection = TurnDetection(
        silence_duration_ms=td.get("silence_duration_ms", int, 600, minimum=100, maximum=5000),
        prefix_padding_ms=td.get("prefix_padding_ms", int, 300, minimum=0, maximum=2000),
        energy_awakeness_threshold=td.get("energy_awakeness_threshold", int, 2500, minimum=0, maximum=5000),
    )
    td.reject_unknown()
    realtime = RealtimeSettings(model=rt.get("model", str, "stepaudio-2.5-realtime"), turn_detection=turn_detection)
    rt.reject_unknown()

    bi = f.section("barge_in")
    barge_in = BargeIn(enabled=bi.get("enabled", bool, True),
                       min_speech_ms=bi.get("min_speech_ms", int, 200, minimum=20, maximum=3000))
    bi.reject_unknown()

    persona = Persona(
        name=name, source=str(source), numbers=tuple(numbers), language=language, voice=voice,
        instructions=instructions, greeting=greeting, realtime=realtime, barge_in=barge_in,
        max_call_seconds=f.get("max_call_seconds", int, 900, minimum=1, maximum=4 * 3600),
        default=is_default,
    )
    f.reject_unknown()
    return persona


def load_dialplan(folder: str | Path) -> Dialplan:
    """Every ``*.yaml``/``*.yml`` in ``folder``; a file holds one persona or ``personas: [...]``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(folder, "", "dialplan folder does not exist")
    personas: list[Persona] = []
    files = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
    if not files:
        raise ConfigError(folder, "", "no *.yaml dialplan files found")
    for path in files:
        data = load_yaml(path)
        if isinstance(data, dict) and "personas" in data:
            if set(data) != {"personas"}:
                extra = sorted(set(data) - {"personas"})[0]
                raise ConfigError(path, extra, "unknown field next to 'personas'")
            items = data["personas"]
            if not isinstance(items, list) or not items:
                raise ConfigError(path, "personas", "expected a non-empty list of personas")
            personas.extend(_persona(path, item, f"personas[{i}]") for i, item in enumerate(items))
        else:
            personas.append(_persona(path, data, ""))

    plan = Dialplan(personas=personas)
    names: dict[str, Persona] = {}
    for persona in personas:
        if persona.name in names:
            raise ConfigError(persona.source, "name",
                              f"persona name {persona.name!r} is also used in {names[persona.name].source}")
        names[persona.name] = persona
        for number in persona.numbers:
            other = plan.by_number.get(number)
            if other is not None:
                raise ConfigError(persona.source, "numbers",
                                  f"{number} is claimed by persona {persona.name!r} and by persona "
                                  f"{other.name!r} ({other.source})")
            plan.by_number[number] = persona
        if persona.default:
            if plan.default is not None:
                raise ConfigError(persona.source, "default",
                                  f"only one default persona is allowed; {plan.default.name!r} "
                                  f"({plan.default.source}) is default too")
            plan.default = persona
    return plan
