"""Dialplan loading: personas by number, default persona, and errors that name file and field."""

from pathlib import Path

import pytest

from voicebot.config import ConfigError, check_serving, load_settings
from voicebot.dialplan import load_dialplan

REPO = Path(__file__).resolve().parent.parent

GOOD = """\
name: {name}
numbers: [{numbers}]
language: en
voice: lively-girl
instructions: Be brief.
greeting: Hello.
"""


def write(folder: Path, filename: str, text: str) -> Path:
    path = folder / filename
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_dialplans_load_with_one_chinese_and_one_english_persona():
    plan = load_dialplan(REPO / "dialplans")
    languages = {p.language for p in plan.personas}
    assert {"zh", "en"} <= languages
    assert plan.default is not None
    assert plan.lookup("+862160001234").language == "zh"
    assert plan.lookup("+19999999999") is plan.default   # a number no file names


def test_lookup_by_number_and_default(tmp_path):
    write(tmp_path, "a.yaml", GOOD.format(name="a", numbers='"+15551230001"'))
    write(tmp_path, "b.yaml", GOOD.format(name="b", numbers='"+15551230002"') + "default: true\n")
    plan = load_dialplan(tmp_path)
    assert plan.lookup("+15551230001").name == "a"
    assert plan.lookup("+15551230002").name == "b"
    assert plan.lookup("+4930123456").name == "b"


def test_without_default_unknown_numbers_have_no_persona(tmp_path):
    write(tmp_path, "a.yaml", GOOD.format(name="a", numbers='"+15551230001"'))
    assert load_dialplan(tmp_path).lookup("+4930123456") is None


def test_number_claimed_twice_names_both_personas(tmp_path):
    write(tmp_path, "a.yaml", GOOD.format(name="a", numbers='"+15551230001"'))
    b = write(tmp_path, "b.yaml", GOOD.format(name="b", numbers='"+15551230001"'))
    with pytest.raises(ConfigError) as err:
        load_dialplan(tmp_path)
    assert err.value.source == str(b)
    assert err.value.field_path == "numbers"
    assert "+15551230001" in str(err.value) and "'a'" in str(err.value) and "'b'" in str(err.value)


def test_missing_field_is_named(tmp_path):
    path = write(tmp_path, "a.yaml", GOOD.format(name="a", numbers='"+15551230001"').replace("voice: lively-girl\n", ""))
    with pytest.raises(ConfigError) as err:
        load_dialplan(tmp_path)
    assert err.value.source == str(path)
    assert err.value.field_path == "voice"
    assert "required" in str(err.value)


def test_bad_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "a.yaml", "name: a\nnumbers: [\"+15551230001\"\nvoice: x\n")
    with pytest.raises(ConfigError) as err:
        load_dialplan(tmp_path)
    assert err.value.source == str(path)
    assert "line" in err.value.field_path
    assert "invalid YAML" in str(err.value)


@pytest.mark.parametrize("extra, field, words", [
    ("barge_in: {enabled: yes, min_speech_ms: -5}\n", "barge_in.min_speech_ms", "≥"),
    ("realtime: {turn_detection: {energy_awakeness_threshold: 9000}}\n",
     "realtime.turn_detection.energy_awakeness_threshold", "≤ 5000"),
    ("realtime: {turn_detection: {silence_ms: 500}}\n", "realtime.turn_detection.silence_ms", "unknown field"),
    ("max_call_seconds: ten\n", "max_call_seconds", "integer"),
])
def test_nested_field_errors_carry_the_dotted_path(tmp_path, extra, field, words):
    write(tmp_path, "a.yaml", GOOD.format(name="a", numbers='"+15551230001"') + extra)
    with pytest.raises(ConfigError) as err:
        load_dialplan(tmp_path)
    assert err.value.field_path == field
    assert words in str(err.value)


def test_number_must_be_e164(tmp_path):
    write(tmp_path, "a.yaml", GOOD.format(name="a", numbers="15551230001"))
    with pytest.raises(ConfigError) as err:
        load_dialplan(tmp_path)
    assert err.value.field_path == "numbers[0]"
    assert "E.164" in str(err.value)


def test_config_errors_name_file_and_field(tmp_path):
    path = write(tmp_path, "config.yaml", "server:\n  port: 99999\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ={})
    assert err.value.source == str(path) and err.value.field_path == "server.port"


def test_config_environment_overrides_and_secrets(tmp_path):
    path = write(tmp_path, "config.yaml", "server:\n  public_url: https://bot.example.com\n")
    settings = load_settings(path, environ={"STEP_API_KEY": "sk-secret", "TWILIO_AUTH_TOKEN": "tw-auth-9f8e",
                                            "STEPFUN_BASE_URL": "http://127.0.0.1:9000/step_plan/v1"})
    assert settings.stepfun.base_url == "http://127.0.0.1:9000/step_plan/v1"
    assert settings.stepfun.ws_base_url == "ws://127.0.0.1:9000/step_plan/v1"
    assert settings.public_ws_url == "wss://bot.example.com"
    assert not settings.stepfun.emulated
    assert "sk-secret" not in repr(settings) and "tw-auth-9f8e" not in repr(settings.twilio)


def test_serving_with_a_real_key_needs_the_twilio_token_while_signatures_are_checked(tmp_path):
    path = write(tmp_path, "config.yaml", "{}\n")
    settings = load_settings(path, environ={"STEP_API_KEY": "sk"})    # other commands do not need it
    with pytest.raises(ConfigError) as err:
        check_serving(settings)
    assert err.value.field_path == "TWILIO_AUTH_TOKEN"
    check_serving(load_settings(path, environ={"STEP_API_KEY": "sk", "TWILIO_AUTH_TOKEN": "t"}))
