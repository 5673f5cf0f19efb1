"""dialplans/*.yaml → one Persona per phone number (E.164), plus the default persona."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .audio.vad import BACKENDS as VAD_BACKENDS
from .audio.vad import DEFAULT_BACKEND as DEFAULT_VAD
from .audio.vad import VadUnavailable, check_backend
from .config import ConfigError, Fields, absolute_url, load_yaml, url_problem
from .stepfun.models import ASR_MODELS, CHAT_MODELS, REALTIME_MODELS, TTS_MODELS, UnknownModel, unknown_model
from .tools import ToolSettings, read_tools

E164 = re.compile(r"^\+[1-9]\d{1,14}$")
LANGUAGES = ("zh", "en")


@dataclass(frozen=True)
class TurnDetection:
    silence_duration_ms: int = 600
    prefix_padding_ms: int = 300
    energy_awakeness_threshold: int = 2500


@dataclass(frozen=True)
class RealtimeSettings:
    model: str = REALTIME_MODELS[0]
    turn_detection: TurnDetection = TurnDetection()


ENGINES = ("realtime", "chain", "auto")
TTS_TRANSPORTS = ("http", "ws")
VADS = VAD_BACKENDS      # "energy", "webrtc", "silero": see voicebot/audio/vad.py and benchmarks/RESULTS.md

# What the chain says when it could not understand, when the chat failed, and (optionally) while it
# takes over from the realtime model, unless the persona says otherwise.
DEFAULT_LINES = {
    "reprompt": {"zh": "抱歉，我没有听清，您能再说一遍吗？", "en": "Sorry, could you say that again?"},
    "apology": {"zh": "抱歉，我这边出了点问题，请稍等。", "en": "Sorry, I had a problem there. One moment please."},
    "silence_reprompt": {"zh": "您还在吗？", "en": "Are you still there?"},
    "goodbye": {"zh": "感谢您的来电，再见。", "en": "Thank you for calling. Goodbye."},
}
DTMF_MODES = ("pass", "collect", "off")


@dataclass(frozen=True)
class ChainSettings:
    """The ASR → chat → TTS engine's settings (used for engine: chain, and as the fallback of auto)."""

    asr_language: str = "en"
    asr_model: str = ASR_MODELS[0]
    chat_model: str = CHAT_MODELS[0]
    temperature: float = 0.5
    tts_model: str = TTS_MODELS[0]
    tts_voice: str = ""
    tts_instruction: str | None = None
    tts_speed: float = 1.0
    tts_volume: float = 1.0
    tts_transport: str = "http"
    tts_stall_s: float = 5.0       # a TTS answer silent this long mid-sentence is given up (the sentence skipped)
    vad: str = DEFAULT_VAD         # the endpointing VAD backend (audio/vad.py)
    silence_ms: int = 600          # caller silence that ends a turn
    min_speech_ms: int = 200       # shorter noises are not a turn
    max_turn_s: float = 30.0       # a turn this long is cut and answered
    reprompt: str = ""
    apology: str = ""
    filler: str | None = None      # said while switching from realtime to the chain


@dataclass(frozen=True)
class BargeIn:
    enabled: bool = True
    min_speech_ms: int = 200


@dataclass(frozen=True)
class DtmfSettings:
    """Caller keypresses to the model: each digit as it comes (pass), one string once complete (collect)."""

    mode: str = "pass"
    max_digits: int = 16         # collect: the string is complete at this many digits,
    terminator: str = "#"        #   at this key (not included),
    timeout_s: float = 5.0       #   or this long after the last key


@dataclass(frozen=True)
class SilenceSettings:
    """The caller silent (no speech, the bot not speaking) for ``reprompt_s`` → ``reprompt``; for
    ``hang_up_s`` → ``goodbye``, then the bot hangs up. None: that step is off."""

    reprompt_s: float | None = None
    reprompt: str = ""
    hang_up_s: float | None = None
    goodbye: str = ""


@dataclass(frozen=True)
class EventsWebhook:
    url: str
    secret_env: str | None = None


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
    engine: str = "auto"
    chain: ChainSettings = ChainSettings()
    realtime_response_timeout_s: float = 8.0   # no realtime event this long while a reply is due → failover
    tools: ToolSettings = ToolSettings()
    dtmf: DtmfSettings = DtmfSettings()
    silence: SilenceSettings = SilenceSettings()
    goodbye: str = ""        # said before the bot ends the call itself (max_call_seconds, silence)
    record: bool = False     # a stereo recording of the call as the caller heard it (recordings_dir)
    events_webhook: EventsWebhook | None = None
    unknown_models: tuple[UnknownModel, ...] = ()   # model names StepFun does not document (stepfun/models.py)


@dataclass
class Dialplan:
    personas: list[Persona]
    by_number: dict[str, Persona] = field(default_factory=dict)
    default: Persona | None = None

    @property
    def unknown_models(self) -> list[UnknownModel]:
        """Every model name a persona sets that StepFun does not document: a warning, or an error with
        stepfun.strict_models (``voicebot check`` and ``serve`` decide, server.check_startup)."""
        return [unknown for persona in self.personas for unknown in persona.unknown_models]

    def lookup(self, number: str | None) -> Persona | None:
        """The persona answering ``number``; the default persona for numbers no file names."""
        if number and number in self.by_number:
            return self.by_number[number]
        return self.default

    def named(self, name: str) -> Persona | None:
        return next((p for p in self.personas if p.name == name), None)

    def replace_with(self, other: "Dialplan") -> None:
        """Take ``other``'s personas in place (a reload): whoever holds this Dialplan answers new calls with them,
        while calls in progress keep the Persona they started with. One step of the event loop: no call sees
        half of each."""
        self.personas, self.by_number, self.default = other.personas, other.by_number, other.default

    def changes_to(self, other: "Dialplan") -> dict[str, list[str]]:
        """Persona names ``added``, ``removed`` and ``changed`` (any field, numbers included) from here to
        ``other``."""
        old = {p.name: p for p in self.personas}
        new = {p.name: p for p in other.personas}
        return {"added": sorted(new.keys() - old.keys()), "removed": sorted(old.keys() - new.keys()),
                "changed": sorted(name for name in old.keys() & new.keys() if old[name] != new[name])}

    def persona_for(self, number: str | None, *, asked: str | None = None,
                    fallback: str | None = None) -> tuple[Persona | None, str]:
        """The persona answering a call to ``number``, or None and why not: the one ``asked`` for by name
        (route, config or custom parameter), else the one owning the number, else ``fallback`` (the carrier's
        configured persona), else the default."""
        if asked:
            return self.named(asked), f"no persona named {asked!r}"
        if fallback and (number is None or number not in self.by_number):
            return self.named(fallback), f"no persona named {fallback!r}"
        return self.lookup(number), f"no persona for number {number!r}"


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
    realtime = RealtimeSettings(model=rt.get("model", str, REALTIME_MODELS[0]), turn_detection=turn_detection)
    rt.reject_unknown()

    bi = f.section("barge_in")
    barge_in = BargeIn(enabled=bi.get("enabled", bool, True),
                       min_speech_ms=bi.get("min_speech_ms", int, 200, minimum=20, maximum=3000))
    bi.reject_unknown()

    engine = f.get("engine", str, "auto", choices=ENGINES)
    ch = f.section("chain")
    chain = ChainSettings(
        asr_language=ch.get("asr_language", str, language, choices=LANGUAGES),
        asr_model=ch.get("asr_model", str, ASR_MODELS[0]),
        chat_model=ch.get("chat_model", str, CHAT_MODELS[0]),
        tts_model=ch.get("tts_model", str, TTS_MODELS[0]),
        temperature=ch.get("temperature", float, 0.5, minimum=0.0, maximum=2.0),
        tts_voice=ch.get("tts_voice", str, voice),
        tts_instruction=ch.get("tts_instruction", str, None),
        tts_speed=ch.get("tts_speed", float, 1.0, minimum=0.5, maximum=2.0),
        tts_volume=ch.get("tts_volume", float, 1.0, minimum=0.1, maximum=2.0),
        tts_transport=ch.get("tts_transport", str, "http", choices=TTS_TRANSPORTS),
        tts_stall_s=ch.get("tts_stall_s", float, 5.0, minimum=0.5, maximum=60.0),
        vad=ch.get("vad", str, DEFAULT_VAD, choices=VADS),
        silence_ms=ch.get("silence_ms", int, turn_detection.silence_duration_ms, minimum=100, maximum=5000),
        min_speech_ms=ch.get("min_speech_ms", int, 200, minimum=20, maximum=3000),
        max_turn_s=ch.get("max_turn_s", float, 30.0, minimum=1.0, maximum=120.0),
        reprompt=ch.get("reprompt", str, DEFAULT_LINES["reprompt"][language]),
        apology=ch.get("apology", str, DEFAULT_LINES["apology"][language]),
        filler=ch.get("filler", str, None),
    )
    if chain.tts_instruction is not None and len(chain.tts_instruction) > 200:
        raise ch.error("tts_instruction", f"must be at most 200 characters, has {len(chain.tts_instruction)}")
    if chain.tts_instruction is not None and chain.tts_model != TTS_MODELS[0]:
        raise ch.error("tts_instruction", f"only {TTS_MODELS[0]} takes an instruction, not chain.tts_model "
                                          f"{chain.tts_model!r}")
    unknown_models = tuple(found for found in (
        unknown_model(source, rt.path("model"), "realtime", realtime.model),
        unknown_model(source, ch.path("asr_model"), "asr", chain.asr_model),
        unknown_model(source, ch.path("chat_model"), "chat", chain.chat_model),
        unknown_model(source, ch.path("tts_model"), "tts", chain.tts_model)) if found is not None)
    if engine != "realtime":        # the chain may run: its VAD must be usable now, not at call time
        try:
            check_backend(chain.vad)
        except VadUnavailable as exc:
            raise ch.error("vad", str(exc)) from None
    ch.reject_unknown()

    tools = read_tools(f.section("tools"))
    goodbye = f.get("goodbye", str, DEFAULT_LINES["goodbye"][language])
    dt = f.section("dtmf")
    dtmf = DtmfSettings(mode=dt.get("mode", str, "pass", choices=DTMF_MODES),
                        max_digits=dt.get("max_digits", int, 16, minimum=1, maximum=64),
                        terminator=dt.get("terminator", str, "#", choices=("#", "*", "")),
                        timeout_s=dt.get("timeout_s", float, 5.0, minimum=0.5, maximum=60.0))
    dt.reject_unknown()
    si = f.section("silence")
    silence = SilenceSettings(reprompt_s=si.get("reprompt_s", float, None, minimum=1.0, maximum=600.0),
                              reprompt=si.get("reprompt", str, DEFAULT_LINES["silence_reprompt"][language]),
                              hang_up_s=si.get("hang_up_s", float, None, minimum=1.0, maximum=3600.0),
                              goodbye=si.get("goodbye", str, goodbye))
    if silence.reprompt_s is not None and silence.hang_up_s is not None and silence.hang_up_s <= silence.reprompt_s:
        raise si.error("hang_up_s", f"must be longer than reprompt_s ({silence.reprompt_s:g} s): the re-prompt "
                                    "comes first")
    si.reject_unknown()
    events_webhook = None
    if f.data.get("events_webhook") is not None:
        ev = f.section("events_webhook")
        url = ev.get("url", str)
        if not absolute_url(url):
            raise ev.error("url", url_problem(url))
        secret_env = ev.get("secret_env", str, None)
        if secret_env is not None and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", secret_env):
            raise ev.error("secret_env", f"expected the name of an environment variable, got {secret_env!r}")
        ev.reject_unknown()
        events_webhook = EventsWebhook(url=url, secret_env=secret_env)
    else:
        f.section("events_webhook")

    persona = Persona(
        name=name, source=str(source), numbers=tuple(numbers), language=language, voice=voice,
        instructions=instructions, greeting=greeting, realtime=realtime, barge_in=barge_in,
        max_call_seconds=f.get("max_call_seconds", int, 900, minimum=1, maximum=4 * 3600),
        default=is_default,
        engine=engine,
        chain=chain,
        realtime_response_timeout_s=f.get("realtime_response_timeout_s", float, 8.0, minimum=0.5, maximum=60.0),
        tools=tools,
        dtmf=dtmf,
        silence=silence,
        goodbye=goodbye,
        record=f.get("record", bool, False),
        events_webhook=events_webhook,
        unknown_models=unknown_models,
    )
    f.reject_unknown()
    return persona


def dialplan_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    return sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])


def dialplan_version(folder: str | Path) -> dict[str, tuple[int, int]]:
    """What changes when a dialplan file is added, removed or written: each file's modification time and size
    (through symlinks, as a Kubernetes ConfigMap mounts them)."""
    version = {}
    for path in dialplan_files(folder):
        try:
            stat = path.stat()
        except OSError:          # removed between the listing and now, or a dangling link
            continue
        version[path.name] = (stat.st_mtime_ns, stat.st_size)
    return version


def load_dialplan(folder: str | Path) -> Dialplan:
    """Every ``*.yaml``/``*.yml`` in ``folder``; a file holds one persona or ``personas: [...]``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(folder, "", "dialplan folder does not exist")
    personas: list[Persona] = []
    files = dialplan_files(folder)
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
