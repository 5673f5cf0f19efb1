"""`voicebot check` runs every validation `voicebot serve` runs before it listens: what serve refuses, check
refuses with the same message (file: field)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from voicebot.config import CARRIER_SECTIONS, ConfigError, load_settings
from voicebot.dialplan import load_dialplan
from voicebot.server import CARRIER_MODULES, check_startup

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "config.yaml"
BASE_ENV = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}
KNOWN_CARRIERS = "telnyx, signalwire, plivo, exotel, vonage, jambonz, asterisk, audiosocket, freeswitch"


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
