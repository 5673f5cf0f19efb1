"""`voicebot check` runs every validation `voicebot serve` runs before it listens: what serve refuses, check
refuses with the same message (file: field); and the StepFun model names a dialplan sets are checked in both,
a warning by default, an error with stepfun.strict_models or --strict-models."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from voicebot.config import CARRIER_SECTIONS, ConfigError, load_settings
from voicebot.dialplan import load_dialplan
from voicebot.server import CARRIER_MODULES, check_startup
from voicebot.stepfun.models import ASR_MODELS, CHAT_MODELS, KNOWN_MODELS, REALTIME_MODELS, TTS_MODELS

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "config.yaml"
BASE_ENV = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}
KNOWN_CARRIERS = "telnyx, signalwire, plivo, exotel, vonage, jambonz, asterisk, audiosocket, freeswitch, browser"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def shipped_config(tmp_path: Path, *edits: tuple[str, str], dialplans: Path | None = None) -> Path:
    """The shipped config.yaml on a free loopback port, JSON logs, with the dialplans and database given, and
    each (old, new) text edit applied (each must apply)."""
    port = _free_port()
    text = (SHIPPED.read_text(encoding="utf-8").replace("port: 8080", f"port: {port}")
            .replace("host: 0.0.0.0", "host: 127.0.0.1").replace("http://127.0.0.1:8080", f"http://127.0.0.1:{port}")
            .replace("dialplans: dialplans", f"dialplans: {dialplans or REPO / 'dialplans'}")
            .replace("format: auto", "format: json"))
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def voicebot(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "voicebot.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**BASE_ENV, **(env or {})})


def serve_refuses(config: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """`voicebot serve` exits 2 without listening; its stderr. A serve that starts is killed and fails the test."""
    try:
        proc = voicebot("serve", "--config", str(config), *args, env=env, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("voicebot serve started (it was still running after 30 s) where it should have refused")
    assert proc.returncode == 2, proc.stderr[-2000:]
    return proc.stderr


# -- every validation of serve, in check -------------------------------------------------------------------------

REFUSED = {
    "signalwire codec": ([("    codec: PCMU", "    codec: OPUS")], {},
                         "carriers.signalwire.codec: expected one of PCMU, PCMA, L16@16000h, L16@24000h, got 'OPUS'"),
    "unknown carrier": ([("carriers:\n", "carriers:\n  skype:\n    auth: true\n")], {},
                        f"carriers.skype: unknown carrier (known: {KNOWN_CARRIERS})"),
    "twilio among the carriers": ([("carriers:\n", "carriers:\n  twilio:\n    auth: true\n")], {},
                                  "carriers.twilio: unknown carrier (known: "),
    "unknown field of a carrier": ([("    username: exotel\n", "    username: exotel\n    pasword: x\n")], {},
                                   "carriers.exotel.pasword: unknown field"),
    "carrier persona": ([("    # persona: <name>", "    persona: nobody")], {},
                        "carriers.audiosocket.persona: no persona named 'nobody'"),
    "a StepFun key without the Twilio token": ([], {"STEP_API_KEY": "sk-test-1"},
                                               "environment: TWILIO_AUTH_TOKEN: is required while "
                                               "twilio.validate_signatures is on"),
    "a short stream secret": ([], {"VOICEBOT_STREAM_SECRET": "short"},
                              "environment: VOICEBOT_STREAM_SECRET: VOICEBOT_STREAM_SECRET is too short"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_check_refuses_what_serve_refuses_with_the_same_message(tmp_path, case):
    edits, env, message = REFUSED[case]
    config = shipped_config(tmp_path, *edits)
    checked = voicebot("check", "--config", str(config), env=env)
    assert checked.returncode == 2, checked.stdout
    assert f"voicebot: configuration error: {config}: {message}" in checked.stderr or \
        f"voicebot: configuration error: {message}" in checked.stderr, checked.stderr
    served = serve_refuses(config, env=env)
    assert checked.stderr.strip().splitlines()[-1] in served


def test_every_carrier_module_but_twilio_has_a_section():
    """Twilio's settings are the top-level twilio: section; every other carrier has carriers.<name>."""
    assert CARRIER_MODULES == ("twilio", *CARRIER_SECTIONS)
    assert ", ".join(CARRIER_SECTIONS) == KNOWN_CARRIERS


def test_carrier_sections_may_be_empty_or_absent(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"dialplans: {REPO / 'dialplans'}\ncarriers:\n  vonage:\n  telnyx: {{}}\n", encoding="utf-8")
    settings = load_settings(config, environ={})
    check_startup(settings, load_dialplan(settings.dialplans_dir))
    config.write_text(f"dialplans: {REPO / 'dialplans'}\ncarriers:\n  vonage: [auth]\n", encoding="utf-8")
    settings = load_settings(config, environ={})
    with pytest.raises(ConfigError) as err:
        check_startup(settings, load_dialplan(settings.dialplans_dir))
    assert err.value.field_path == "carriers.vonage" and "expected a mapping" in err.value.problem


# -- model names -------------------------------------------------------------------------------------------------

def test_the_known_names_are_the_documented_ones_and_the_emulator_takes_the_same():
    """stepfun-api.md: realtime §1, ASR §6, chat §2, TTS §3; the defaults first."""
    assert REALTIME_MODELS == ("stepaudio-2.5-realtime",)
    assert ASR_MODELS == ("stepaudio-2.5-asr", "stepaudio-2-asr-pro", "step-asr-1.1-stream")
    assert CHAT_MODELS == ("stepaudio-2.5-chat",)
    assert TTS_MODELS == ("stepaudio-2.5-tts", "step-tts-2", "step-tts-mini")
    from voicebot.emulator import app, asr, chat, voices
    assert set(app.REALTIME_MODELS) == set(REALTIME_MODELS) and set(asr.ASR_MODELS) == set(ASR_MODELS)
    assert set(chat.CHAT_MODELS) == set(CHAT_MODELS) and set(voices.TTS_MODELS) == set(TTS_MODELS)


PERSONA = """name: odd-models
numbers: ["+15557650111"]
default: true
language: en
voice: lively-girl
instructions: Be brief.
"""

MODEL_FIELDS = {   # dialplan text → (field, api)
    "realtime:\n  model: {name}\n": ("realtime.model", "realtime"),
    "chain:\n  asr_model: {name}\n": ("chain.asr_model", "asr"),
    "chain:\n  chat_model: {name}\n": ("chain.chat_model", "chat"),
    "chain:\n  tts_model: {name}\n": ("chain.tts_model", "tts"),
}


def persona_folder(tmp_path: Path, extra: str) -> Path:
    folder = tmp_path / "dialplans"
    folder.mkdir(parents=True)
    (folder / "odd.yaml").write_text(PERSONA + extra, encoding="utf-8")
    return folder


@pytest.mark.parametrize("snippet", sorted(MODEL_FIELDS), ids=lambda s: MODEL_FIELDS[s][0])
def test_every_documented_name_is_accepted_and_another_is_named_with_the_known_ones(tmp_path, snippet):
    field, api = MODEL_FIELDS[snippet]
    for i, name in enumerate(KNOWN_MODELS[api]):
        plan = load_dialplan(persona_folder(tmp_path / f"ok{i}", snippet.format(name=name)))
        assert plan.unknown_models == [], name
    plan = load_dialplan(persona_folder(tmp_path / "odd", snippet.format(name="gpt-nonsense")))
    [unknown] = plan.unknown_models
    assert (unknown.field, unknown.api, unknown.name) == (field, api, "gpt-nonsense")
    assert str(unknown) == (f"{tmp_path / 'odd' / 'dialplans' / 'odd.yaml'}: {field}: 'gpt-nonsense' is not a "
                            f"documented StepFun {api} model (known: {', '.join(KNOWN_MODELS[api])})")


def test_a_persona_list_names_the_persona_in_the_field(tmp_path):
    folder = tmp_path / "dialplans"
    folder.mkdir()
    (folder / "many.yaml").write_text("""personas:
  - {name: first, numbers: ["+15557650111"], default: true, language: en, voice: lively-girl, instructions: Hi.}
  - {name: second, numbers: ["+15557650112"], language: en, voice: lively-girl, instructions: Hi.,
     realtime: {model: gpt-nonsense}}
""", encoding="utf-8")
    [unknown] = load_dialplan(folder).unknown_models
    assert unknown.field == "personas[1].realtime.model"


def test_tts_instruction_is_refused_with_a_tts_model_that_takes_none(tmp_path):
    """stepfun-api.md §3: instruction is 2.5 only; other TTS models answer it with an error."""
    with pytest.raises(ConfigError) as err:
        load_dialplan(persona_folder(tmp_path, "chain:\n  tts_model: step-tts-2\n  tts_instruction: Warmly.\n"))
    assert err.value.field_path == "chain.tts_instruction" and "stepaudio-2.5-tts" in err.value.problem


def test_check_warns_of_an_unknown_model_and_refuses_it_when_strict(tmp_path):
    plans = persona_folder(tmp_path, "realtime:\n  model: gpt-nonsense\n")
    config = shipped_config(tmp_path, dialplans=plans)
    expected = (f"{plans / 'odd.yaml'}: realtime.model: 'gpt-nonsense' is not a documented StepFun realtime "
                "model (known: stepaudio-2.5-realtime)")
    checked = voicebot("check", "--config", str(config))
    assert checked.returncode == 0, checked.stderr
    assert f"warning: {expected}" in checked.stderr
    assert "stepfun.strict_models" in checked.stderr        # how to make it an error
    strict = voicebot("check", "--config", str(config), "--strict-models")
    assert strict.returncode == 2 and f"voicebot: configuration error: {expected}" in strict.stderr
    by_file = shipped_config(tmp_path, ("  strict_models: false", "  strict_models: true"), dialplans=plans)
    strict = voicebot("check", "--config", str(by_file))
    assert strict.returncode == 2 and f"voicebot: configuration error: {expected}" in strict.stderr
    assert expected in serve_refuses(by_file) and expected in serve_refuses(config, "--strict-models")


def test_the_shipped_dialplans_use_documented_models_only():
    checked = voicebot("check")
    assert checked.returncode == 0 and "warning" not in checked.stderr, checked.stderr


def test_serve_logs_an_unknown_model_and_shows_its_settings_in_the_startup_line(tmp_path):
    plans = persona_folder(tmp_path, "chain:\n  chat_model: gpt-nonsense\n")
    config = shipped_config(tmp_path, dialplans=plans)
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "voicebot.cli", "serve", "--config", str(config)], cwd=REPO,
                                env={**BASE_ENV, "TWILIO_AUTH_TOKEN": "serve-test-token"}, stdout=log_file,
                                stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while "voicebot_listening" not in log_path.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    [warning] = [e for e in lines if e["event"] == "stepfun_model_unknown"]
    assert warning["level"] == "warning" and warning["field"] == "chain.chat_model"
    assert warning["model"] == "gpt-nonsense" and warning["known"] == ["stepaudio-2.5-chat"]
    assert warning["file"] == str(plans / "odd.yaml") and "stepfun.strict_models" in warning["message"]
    [listening] = [e for e in lines if e["event"] == "voicebot_listening"]
    assert listening["twilio_signatures"] is True and listening["twilio_auth_token_set"] is True
    assert "serve-test-token" not in log_path.read_text()
