"""deploy/Dockerfile and .dockerignore: hadolint finds nothing, the image is laid out as the config expects,
the build context holds what the Dockerfile copies and nothing private, and the HEALTHCHECK command, run as
the container would run it, tells a serving voicebot from a stopped one. (No container runtime here: the
image itself is built by `docker compose -f deploy/docker-compose.yml build`, README.)"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from deploy_checks import DEPLOY, DEPLOY_CONFIG, REPO, DeployedServer, pending_server_keys

DOCKERFILE = DEPLOY / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        lines.append(pending + raw)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    parsed = []
    for line in lines:
        keyword, _, rest = line.strip().partition(" ")
        parsed.append((keyword.upper(), rest.strip()))
    return parsed


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def one(keyword: str) -> str:
    found = [args for k, args in final_stage() if k == keyword]
    assert len(found) == 1, f"expected one {keyword} in the final stage, found {found}"
    return found[0]


def deploy_port() -> int:
    return yaml.safe_load(DEPLOY_CONFIG.read_text(encoding="utf-8"))["server"]["port"]


def test_hadolint_finds_nothing():
    """Every rule at every level (error, warning, info, style): a finding fails the build of this test."""
    result = subprocess.run([str(HADOLINT), "--no-color", "--format", "json", "--failure-threshold", "style",
                             str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and json.loads(result.stdout) == [], result.stdout + result.stderr


def test_hadolint_is_real_and_strict(tmp_path):
    """The linter above does lint: a Dockerfile with the usual mistakes fails it, naming the rules."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install voicebot\nUSER root\nEXPOSE 8080\n")
    result = subprocess.run([str(HADOLINT), "--no-color", "--format", "json", "--failure-threshold", "style",
                             str(bad)], capture_output=True, text=True, timeout=60)
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert result.returncode != 0 and {"DL3007", "DL3013", "DL3042", "DL3002"} <= codes, codes


def test_slim_base_and_the_fast_extra_installed():
    bases = [re.fullmatch(r"PYTHON_IMAGE=(\S+)", args) for k, args in instructions() if k == "ARG"]
    base = next(match for match in bases if match)
    assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?", base.group(1)), base.group(1)
    assert all(args == "${PYTHON_IMAGE}" or args.startswith("${PYTHON_IMAGE} AS ")
               for k, args in instructions() if k == "FROM")
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    minor = int(re.search(r"3\.(\d+)", base.group(1)).group(1))
    assert minor >= int(re.search(r">=\s*3\.(\d+)", requires).group(1))
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "fast" in extras and any("uvloop" in dep for dep in extras["fast"])
    installs = [args for k, args in instructions() if k == "RUN" and "pip install" in args]
    assert any('".[fast]"' in run or "'.[fast]'" in run for run in installs), installs
    assert all("--no-cache-dir" in run for run in installs), installs
    # The runtime stage takes the built environment, not the sources.
    assert any(k == "COPY" and args.startswith("--from=build /opt/voicebot ") for k, args in final_stage())


def test_runs_as_a_created_non_root_user():
    user = one("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and (not gid or (gid.isdigit() and int(gid) != 0)), user
    created = " ".join(args for k, args in final_stage() if k == "RUN")
    assert re.search(rf"useradd .*--uid {uid}\b", created) and re.search(rf"groupadd .*--gid {gid or uid}\b", created)
    # Its data folder is its own and a volume; everything else (config, code) stays root's and read-only.
    assert re.search(r"chown -R voicebot:voicebot /var/lib/voicebot\b", created)
    assert json.loads(one("VOLUME")) == ["/var/lib/voicebot"]


def test_config_and_dialplans_where_the_config_says():
    """VOICEBOT_CONFIG names the copied deploy/config.yaml; its dialplans folder (relative to it) holds the
    example dialplans; its data folders are inside the volume."""
    env = " ".join(args for k, args in final_stage() if k == "ENV")
    config_path = re.search(r"VOICEBOT_CONFIG=(\S+)", env).group(1)
    copies = {shlex.split(args)[-1]: shlex.split(args)[0] for k, args in final_stage()
              if k == "COPY" and not args.startswith("--from")}
    assert copies[config_path] == "deploy/config.yaml"
    config = yaml.safe_load(DEPLOY_CONFIG.read_text(encoding="utf-8"))
    dialplans = str(Path(config_path).parent / config["dialplans"])
    assert copies[dialplans] == "dialplans"
    for key in ("transcripts_dir", "recordings_dir"):
        assert config[key].startswith("/var/lib/voicebot/"), (key, config[key])
    assert config["database"]["url"].startswith("sqlite:////var/lib/voicebot/")


def test_port_healthcheck_and_stop_signal():
    port = deploy_port()
    assert one("EXPOSE") == str(port)
    assert one("STOPSIGNAL") == "SIGTERM"
    healthcheck = one("HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD ")
    argv = json.loads(command)
    assert argv[:2] == ["python", "-c"], "slim images have no curl: the check is python's urllib"
    assert f"'http://127.0.0.1:{port}/healthz'" in argv[2]
    timeout = float(re.search(r"--timeout=(\d+)s", options).group(1))
    assert float(re.search(r"timeout=(\d+)\)", argv[2]).group(1)) < timeout
    assert json.loads(one("ENTRYPOINT")) == ["voicebot"] and json.loads(one("CMD")) == ["serve"]


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parent folders decides; `!` keeps."""
    excluded = False
    parts = path.split("/")
    for pattern in patterns:
        keep = pattern.startswith("!")
        body = pattern[1:] if keep else pattern
        regex = re.escape(body.strip("/")).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*") \
            .replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            excluded = not keep
    return excluded


def test_dockerignore_sends_what_is_copied_and_nothing_private():
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    sources = [shlex.split(args)[:-1] for k, args in instructions() if k == "COPY" and not args.startswith("--from")]
    sent = [source for group in sources for source in group]
    assert sent, "no COPY from the build context"
    for source in sent:
        assert (REPO / source).exists(), f"COPY {source}: no such file in the repository"
        files = [source] if (REPO / source).is_file() else \
            [str(p.relative_to(REPO)) for p in (REPO / source).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        kept_out = [f for f in files if dockerignore_excludes(f, patterns)]
        assert not kept_out, f".dockerignore leaves out {kept_out[:5]} that the Dockerfile copies"
    for private in (".venv/bin/python", ".git/config", "voicebot.db", "transcripts/2026-01-01/x.jsonl",
                    "recordings/twilio-CA1.wav", "tests/conftest.py", "benchmarks/load.py",
                    "voicebot/__pycache__/cli.cpython-311.pyc", "deploy/kubernetes/secret.template.yaml"):
        assert dockerignore_excludes(private, patterns), f"{private} would be sent to the image build"


@pending_server_keys
def test_healthcheck_command_tells_serving_from_stopped(tmp_path):
    """The HEALTHCHECK's own command (its port moved to this test's) against ``voicebot serve`` of
    deploy/config.yaml: exit 0 while the server runs, non-zero once it has stopped."""
    argv = json.loads(one("HEALTHCHECK").partition("CMD ")[2])
    server = DeployedServer(tmp_path)
    try:
        server.wait_up()
        command = [sys.executable if argv[0] == "python" else argv[0], *argv[1:]]
        command[-1] = command[-1].replace(f"127.0.0.1:{deploy_port()}", f"127.0.0.1:{server.port}")
        alive = subprocess.run(command, capture_output=True, text=True, timeout=30)
        assert alive.returncode == 0, alive.stderr
    finally:
        assert server.stop() == 0, server.log_path.read_text()
    dead = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert dead.returncode != 0 and "Connection refused" in dead.stderr, dead.stderr
