"""config.yaml + environment: the shipped file stays valid under every environment override, and `voicebot
check` says so."""

import subprocess
import sys
from pathlib import Path

import pytest

from voicebot.config import ENV_OVERRIDES, ConfigError, check_serving, load_settings

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "config.yaml"

# A value for every environment variable that overrides a file key, and what the loaded setting must then be.
OVERRIDE_VALUES = {
    "STEPFUN_BASE_URL": ("http://127.0.0.1:9000/step_plan/v1",
                         lambda s: s.stepfun.base_url == "http://127.0.0.1:9000/step_plan/v1"),
    "VOICEBOT_DATABASE_URL": ("postgresql://bot:pw-1@db.example:5432/voicebot",
                              lambda s: s.database_url == "postgresql://bot:pw-1@db.example:5432/voicebot"),
}


def check(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "voicebot.cli", "check", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", **env})


def test_every_override_of_a_file_key_is_tested():
    assert set(ENV_OVERRIDES) == set(OVERRIDE_VALUES)
    assert ENV_OVERRIDES["STEPFUN_BASE_URL"] == "stepfun.base_url"
    assert ENV_OVERRIDES["VOICEBOT_DATABASE_URL"] == "database.url"


@pytest.mark.parametrize("name", sorted(OVERRIDE_VALUES))
def test_each_override_applies_to_the_shipped_config(name):
    value, applied = OVERRIDE_VALUES[name]
    assert applied(load_settings(SHIPPED, environ={name: value}))


def test_all_overrides_together_apply_to_the_shipped_config():
    settings = load_settings(SHIPPED, environ={name: value for name, (value, _) in OVERRIDE_VALUES.items()})
    assert all(applied(settings) for _, applied in OVERRIDE_VALUES.values())


@pytest.mark.parametrize("name", sorted(OVERRIDE_VALUES))
def test_a_bad_override_is_named_as_the_environment_variable(name):
    with pytest.raises(ConfigError) as err:
        load_settings(SHIPPED, environ={name: "not a url"})
    assert err.value.source == "environment" and err.value.field_path == name


@pytest.mark.parametrize("name", sorted(OVERRIDE_VALUES))
def test_the_file_value_is_still_checked_under_an_override(tmp_path, name):
    """The file is valid or not on its own: an override does not hide a broken line in it."""
    key = ENV_OVERRIDES[name]
    section, field = key.split(".")
    path = tmp_path / "config.yaml"
    path.write_text(f"{section}:\n  {field}: not a url\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ={name: OVERRIDE_VALUES[name][0]})
    assert err.value.source == str(path) and err.value.field_path == key
    assert "unknown field" not in err.value.problem


@pytest.mark.parametrize("names", [[name] for name in sorted(OVERRIDE_VALUES)] + [sorted(OVERRIDE_VALUES)],
                         ids=lambda names: "+".join(names))
def test_check_passes_with_the_shipped_config_and_overrides(names):
    proc = check({name: OVERRIDE_VALUES[name][0] for name in names})
    assert proc.returncode == 0, proc.stderr
    assert f"config {SHIPPED.relative_to(REPO)}: ok" in proc.stdout or f"config {SHIPPED}: ok" in proc.stdout
    assert "pw-1" not in proc.stdout + proc.stderr


# -- which StepFun endpoint: embedded emulator, a configured URL (no key needed), or the official API ------------

LOCAL = "http://127.0.0.1:9000/step_plan/v1"


def test_no_key_and_the_official_url_means_the_embedded_emulator():
    endpoint = load_settings(SHIPPED, environ={}).stepfun.endpoint()
    assert endpoint.kind == "embedded_emulator"
    assert "no STEP_API_KEY" in endpoint.reason and "STEPFUN_BASE_URL" in endpoint.reason


def test_a_base_url_in_the_environment_alone_is_used_without_a_key():
    settings = load_settings(SHIPPED, environ={"STEPFUN_BASE_URL": LOCAL})
    assert not settings.stepfun.emulated
    endpoint = settings.stepfun.endpoint()
    assert (endpoint.kind, endpoint.url) == ("configured_url", LOCAL)
    assert "STEPFUN_BASE_URL" in endpoint.reason and "no STEP_API_KEY" in endpoint.reason


def test_a_base_url_in_the_file_alone_is_used_without_a_key(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(f"stepfun:\n  base_url: {LOCAL}\n")
    endpoint = load_settings(path, environ={}).stepfun.endpoint()
    assert (endpoint.kind, endpoint.url) == ("configured_url", LOCAL)
    assert f"{path}: stepfun.base_url" in endpoint.reason


def test_a_key_with_the_official_url_means_the_official_api():
    endpoint = load_settings(SHIPPED, environ={"STEP_API_KEY": "sk-1"}).stepfun.endpoint()
    assert (endpoint.kind, endpoint.url) == ("official_api", "https://api.stepfun.com/step_plan/v1")
    assert "STEP_API_KEY" in endpoint.reason
    assert "sk-1" not in str(endpoint)


def test_a_local_emulator_without_a_key_is_not_a_production_server(tmp_path):
    """check_serving asks for TWILIO_AUTH_TOKEN only with a StepFun key: a configured URL alone is local testing."""
    check_serving(load_settings(SHIPPED, environ={"STEPFUN_BASE_URL": LOCAL}))
    with pytest.raises(ConfigError):
        check_serving(load_settings(SHIPPED, environ={"STEPFUN_BASE_URL": LOCAL, "STEP_API_KEY": "sk"}))


@pytest.mark.parametrize("env, expected", [
    ({}, "stepfun: embedded emulator (no STEP_API_KEY"),
    ({"STEPFUN_BASE_URL": LOCAL}, f"stepfun: configured URL {LOCAL} (from STEPFUN_BASE_URL; no STEP_API_KEY"),
    ({"STEP_API_KEY": "sk-2"}, "stepfun: official API https://api.stepfun.com/step_plan/v1 (STEP_API_KEY set"),
], ids=["embedded", "configured", "official"])
def test_check_says_which_stepfun_endpoint_is_used_and_why(env, expected):
    proc = check(env)
    assert proc.returncode == 0, proc.stderr
    assert expected in proc.stdout
    assert "sk-2" not in proc.stdout + proc.stderr
