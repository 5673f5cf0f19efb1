"""config.yaml + environment: the shipped file stays valid under every environment override, and `voicebot
check` says so."""

import subprocess
import sys
from pathlib import Path

import pytest

from voicebot.config import ENV_OVERRIDES, ConfigError, load_settings

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
