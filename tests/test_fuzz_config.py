"""Configuration under hostile edits: config.yaml and the environment (voicebot/config.py ``load_settings``), every
``carriers.<name>`` section as the server reads it (``create_app``), and dialplan files (voicebot/dialplan.py
``load_dialplan``).

The files are the shipped ones and a persona using every section, with fields broken (wrong types, missing,
huge, NaN, YAML's own surprises: ``.inf``, ``0x1F``, unquoted timestamps, anchors, tags, complex keys), cut
short, or not UTF-8. Properties: loading gives settings or a ``ConfigError`` that names its file and says what
is wrong -- never another exception, so ``voicebot check`` and ``serve`` always end with a located message;
and what loads holds no NaN (a NaN passes every ``minimum``/``maximum`` check, then disables the timer or
bound it was meant to set) and no URL that fails when first used (a port past 65535)."""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from voicebot.config import ConfigError, load_settings
from voicebot.dialplan import load_dialplan
from voicebot.server import create_app

from fuzzing import mutated

REPO = Path(__file__).resolve().parent.parent
SHIPPED_CONFIG = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
SHIPPED_CONFIG["carriers"]["audiosocket"]["persona"] = "fuzz-default"
SHIPPED_CONFIG["database"]["spool"] = "voicebot.db.spool.jsonl"

PERSONA = {
    "name": "fuzz-full", "numbers": ["+15550000001", "+15550000002"], "language": "en", "voice": "lively-girl",
    "instructions": "Be brief.", "greeting": "Hello.", "engine": "auto",
    "realtime": {"model": "stepaudio-2.5-realtime",
                 "turn_detection": {"silence_duration_ms": 600, "prefix_padding_ms": 300,
                                    "energy_awakeness_threshold": 2500}},
    "barge_in": {"enabled": True, "min_speech_ms": 200},
    "chain": {"asr_language": "en", "chat_model": "stepaudio-2.5-chat", "temperature": 0.5, "tts_voice": "lively-girl",
              "tts_speed": 1.0, "tts_volume": 1.0, "tts_transport": "http", "vad": "energy", "silence_ms": 600,
              "min_speech_ms": 200, "max_turn_s": 30.0, "reprompt": "Sorry?", "apology": "One moment."},
    "tools": {"hang_up": True, "send_dtmf": True, "transfer": {"sales": "+15550001111", "desk": "sip:desk@pbx.test"},
              "webhook_secret_env": "FUZZ_SECRET",
              "webhooks": [{"name": "lookup", "description": "Find an order.", "url": "https://hooks.test/lookup",
                            "parameters": {"type": "object", "properties": {"order": {"type": "string"}}},
                            "timeout_s": 5.0}]},
    "dtmf": {"mode": "collect", "max_digits": 4, "terminator": "#", "timeout_s": 5.0},
    "silence": {"reprompt_s": 8.0, "reprompt": "Still there?", "hang_up_s": 20.0, "goodbye": "Bye."},
    "goodbye": "Goodbye.", "max_call_seconds": 900, "realtime_response_timeout_s": 8.0, "record": False,
    "events_webhook": {"url": "https://hooks.test/events", "secret_env": "FUZZ_EVENTS_SECRET"},
}
DEFAULT_PERSONA = {"name": "fuzz-default", "default": True, "language": "zh", "voice": "qinhenvsheng",
                   "instructions": "简短回答。"}

# YAML that parses into something no one meant, and bytes that are no YAML text at all
YAML_SURPRISES = ["0x1F", "0o17", "1_000", "1e400", ".inf", "-.inf", ".nan", "~", "2026-13-45T00:00:00Z",
                  "2026-02-30", "2026-01-01 25:61:00", "12:30:00", "[a", "{a: 1", "&a [*a]", "!!binary AAAA",
                  "!!python/object:os.system x", "!!int x", "? [a, b]\n  : c", "'\\x00'", "\"\\ud800\"", "|\n  text",
                  "*undefined"]
NOT_TEXT = [b"\xff\xfe\x00", b"port: \xc3\x28\n", b"\x00\x00\x00", "\ufeffserver: {port: 1}\n".encode()]


@st.composite
def yaml_files(draw, template: dict) -> bytes:
    """A YAML file from ``template``: as it is, with fields broken, with a raw YAML surprise in place of a value,
    cut short, or not UTF-8."""
    doc = draw(st.one_of(st.just(template), mutated(template)))
    text = yaml.safe_dump(doc, allow_unicode=True, sort_keys=False, width=1000)
    kind = draw(st.sampled_from(["as is", "as is", "surprise", "cut", "bytes"]))
    if kind == "surprise":
        lines = text.splitlines()
        candidates = [i for i, line in enumerate(lines) if ": " in line]
        if candidates:
            i = draw(st.sampled_from(candidates))
            key = lines[i].split(": ", 1)[0]
            lines[i] = f"{key}: {draw(st.sampled_from(YAML_SURPRISES))}"
        text = "\n".join(lines) + "\n"
    elif kind == "cut":
        text = text[:draw(st.integers(0, len(text)))]
    elif kind == "bytes":
        return draw(st.sampled_from(NOT_TEXT)) + text.encode()[:draw(st.integers(0, 60))]
    return text.encode()


ENV_VALUES = st.sampled_from(["", "http://127.0.0.1:9000/step_plan/v1", "https://api.stepfun.com/step_plan/v1",
                              "http://[::1", "http://[::1]:99999/x", "ftp://x", "no scheme", "http://", "\u0000",
                              "sqlite:///fuzz.db", "sqlite:///", "sqlite://relative.db", "sqlite:////tmp/fuzz.db?x=1",
                              "postgresql://u:p@db.test:5432/voicebot", "postgresql://[x/db", "postgresql://db.test/",
                              "postgresql://u@db.test:notaport/db", "mysql://x/y", "key-123"])
ENVIRONMENTS = st.dictionaries(st.sampled_from(["STEPFUN_BASE_URL", "STEP_API_KEY", "VOICEBOT_DATABASE_URL",
                                                "TWILIO_AUTH_TOKEN", "TWILIO_ACCOUNT_SID"]), ENV_VALUES, max_size=3)


def usable(value, where: str = "settings") -> None:
    """What was loaded holds no NaN, and every URL in it can be used: urllib reads a port only when a request
    is made (``:99999`` raises there, not here)."""
    if isinstance(value, float):
        assert not math.isnan(value), where
    elif isinstance(value, str) and where.rsplit(".", 1)[-1].endswith("url") and "://" in value:
        urlsplit(value).port     # raises ValueError for a port that is not a number up to 65535
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            usable(getattr(value, f.name), f"{where}.{f.name}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            usable(item, f"{where}[{i}]")


def located(error: ConfigError, *sources: str) -> None:
    """A configuration error says which file (or the environment) and what is wrong."""
    assert error.problem.strip(), error
    assert error.source in sources, (error.source, sources)


def default_dialplan(folder: Path):
    plans = folder / "dialplans"
    plans.mkdir()
    (plans / "default.yaml").write_text(yaml.safe_dump(DEFAULT_PERSONA, allow_unicode=True), encoding="utf-8")
    return load_dialplan(plans)


@given(yaml_files(SHIPPED_CONFIG), ENVIRONMENTS)
@example(b"server: {port: 8080, public_url: 'http://[::1'}\n", {})          # urlsplit: "Invalid IPv6 URL"
@example(b"database: {url: 'postgresql://[x/db'}\n", {})
@example(b"", {"STEPFUN_BASE_URL": "http://[::1"})
@example(b"port: \xc3\x28\n", {})                                          # not UTF-8
@example(b"stepfun: {connect_timeout_s: .nan}\n", {})
@example(b"server: {port: 8080, public_url: 'http://h.test:99999'}\n", {})   # port.parse: at the first request
@example(b"carriers: {telnyx: {call_control: {api_base_url: 'http://[::1'}}}\n", {})
@example(b"", {"STEPFUN_BASE_URL": "http://[::1]:99999/x"})
@example(b"", {"STEP_API_KEY": "http://[::1"})                             # a key is text, whatever it holds
def test_config_loads_or_names_the_field_at_fault(text, environ) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = folder / "config.yaml"
        path.write_bytes(text)
        try:
            settings = load_settings(path, environ)
        except ConfigError as exc:
            located(exc, str(path), "environment")
            return
        usable(settings)
        dialplan = default_dialplan(folder)
        try:
            create_app(settings, dialplan)          # every carriers.<name> section is read here
        except ConfigError as exc:
            located(exc, str(path))


@pytest.mark.parametrize("layout", ["one file", "a personas list"])
@given(persona=yaml_files(PERSONA))
@example(persona=b"name: x\nnumbers: ['+15550000001']\nlanguage: en\nvoice: v\n"
                                    b"instructions: i\nchain: {temperature: .nan}\n")
@example(persona=b"name: x\nnumbers: ['+15550000001']\nlanguage: en\nvoice: v\ninstructions: i\n"
                b"tools: {webhooks: [{name: f, description: d, url: 'http://[::1'}]}\n")       # urlsplit: ValueError
@example(persona=b"name: x\nnumbers: ['+15550000001']\nlanguage: en\nvoice: v\ninstructions: i\n"
                b"events_webhook: {url: 'https://hooks.test:99999/e'}\n")
def test_a_dialplan_loads_or_names_the_field_at_fault(layout, persona) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        plans = Path(tmp)
        default = yaml.safe_dump(DEFAULT_PERSONA, allow_unicode=True).encode()
        if layout == "one file":
            (plans / "default.yaml").write_bytes(default)
            (plans / "persona.yaml").write_bytes(persona)
            sources = (str(plans / "default.yaml"), str(plans / "persona.yaml"))
        else:
            indented = b"\n".join(b"    " + line for line in persona.splitlines())
            (plans / "all.yaml").write_bytes(b"personas:\n  - " + default.replace(b"\n", b"\n    ").rstrip()
                                             + b"\n  -\n" + indented + b"\n")
            sources = (str(plans / "all.yaml"),)
        try:
            plan = load_dialplan(plans)
        except ConfigError as exc:
            located(exc, *sources)
            return
        for p in plan.personas:
            usable(p, p.name)
