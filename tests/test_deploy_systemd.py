"""deploy/systemd/voicebot.service: accepted by ``systemd-analyze verify`` without a warning, hardened to an
exposure ``systemd-analyze security`` rates OK, and stopping it gives the drain its time."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy_checks import DEPLOY, DEPLOY_CONFIG

UNIT = DEPLOY / "systemd" / "voicebot.service"
INSTALLED_VOICEBOT = "/opt/voicebot/bin/voicebot"   # the image's virtual environment, and the unit's
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
# The exposure ceiling, on systemd-analyze's 0-100 scale (shown as 0.0-10.0; below 2.0 is "OK").
EXPOSURE_CEILING = 15

needs_systemd_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")


def directives(text: str) -> dict[str, list[str]]:
    """``Section.Key`` → every value it is given, in order (systemd keys may repeat)."""
    found: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return found


def unit() -> dict[str, list[str]]:
    return directives(UNIT.read_text(encoding="utf-8"))


def runnable_copy(folder: Path, text: str | None = None) -> Path:
    """The unit with ExecStart on this environment's voicebot: verify checks that the program exists, and
    /opt/voicebot is where it is installed on a server, not here."""
    text = UNIT.read_text(encoding="utf-8") if text is None else text
    here = Path(sys.executable).parent / "voicebot"
    assert here.exists()
    copy = folder / UNIT.name
    replaced = text.replace(f"ExecStart={INSTALLED_VOICEBOT} ", f"ExecStart={here} ")
    assert replaced.count(str(here)) == 1, "ExecStart does not run /opt/voicebot/bin/voicebot"
    copy.write_text(replaced, encoding="utf-8")
    return copy


def verify(path: Path) -> list[str]:
    """systemd-analyze verify's complaints about this unit (it exits 0 on unknown keys and bad values, and
    only says so): any line naming the unit, or a non-zero exit."""
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", str(path)], capture_output=True, text=True, timeout=120)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if path.name in line]
    if result.returncode != 0:
        complaints.append(f"exit {result.returncode}: {result.stderr.strip()}")
    return complaints


@needs_systemd_analyze
def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    assert verify(runnable_copy(tmp_path)) == []


@needs_systemd_analyze
def test_verify_check_reports_mistakes(tmp_path):
    """The check above would see a misspelt key, a bad value and a missing program."""
    text = UNIT.read_text(encoding="utf-8")
    misspelt = runnable_copy(tmp_path, text.replace("TimeoutStopSec=", "TimeoutStopSek="))
    assert any("Unknown key" in line and "TimeoutStopSek" in line for line in verify(misspelt))
    bad_value = runnable_copy(tmp_path, text.replace("ProtectSystem=strict", "ProtectSystem=strictly"))
    assert any("strictly" in line for line in verify(bad_value))
    missing = tmp_path / "missing" / UNIT.name
    missing.parent.mkdir()
    missing.write_text(text, encoding="utf-8")
    assert any("not executable" in line for line in verify(missing))


@needs_systemd_analyze
def test_hardening_exposure_is_ok(tmp_path):
    copy = runnable_copy(tmp_path)
    result = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=true", f"--threshold={EXPOSURE_CEILING}",
                             str(copy)], capture_output=True, text=True, timeout=120)
    overall = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert overall, result.stdout + result.stderr
    assert result.returncode == 0, f"exposure {overall.group(1)} above {EXPOSURE_CEILING / 10}:\n{result.stdout}"


def test_stop_drains_and_reload_rereads_dialplans():
    service = unit()
    assert service["Service.KillSignal"] == ["SIGTERM"]
    # SIGTERM to the main process only, which stops its workers; the rest are killed only at the timeout.
    assert service["Service.KillMode"] == ["mixed"]
    drain = float(yaml.safe_load(DEPLOY_CONFIG.read_text())["server"]["drain_seconds"])
    assert float(service["Service.TimeoutStopSec"][0]) >= drain + 10
    assert service["Service.ExecReload"] == ["/bin/kill -HUP $MAINPID"]


def test_runs_as_voicebot_with_the_deployed_layout():
    service = unit()
    config = yaml.safe_load(DEPLOY_CONFIG.read_text())
    assert service["Service.User"] == ["voicebot"] and service["Service.ExecStart"] == [f"{INSTALLED_VOICEBOT} serve"]
    assert service["Service.Environment"] == ["VOICEBOT_CONFIG=/etc/voicebot/config.yaml"]
    assert service["Service.EnvironmentFile"] == ["/etc/voicebot/voicebot.env"]
    # ProtectSystem=strict: the server writes only into its state directory, /var/lib/voicebot.
    assert service["Service.ProtectSystem"] == ["strict"] and service["Service.StateDirectory"] == ["voicebot"]
    for written in (config["transcripts_dir"], config["recordings_dir"], config["database"]["url"][len("sqlite:///"):]):
        assert written.startswith("/var/lib/voicebot/"), written
    for hardening in ("NoNewPrivileges", "PrivateTmp", "ProtectHome", "PrivateDevices"):
        assert service[f"Service.{hardening}"] == ["yes"], hardening
    assert service["Service.CapabilityBoundingSet"] == [""]
