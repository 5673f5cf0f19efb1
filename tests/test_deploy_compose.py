"""deploy/docker-compose.yml against the Compose specification's JSON schema, and the stack's files against one
another: what is mounted exists, the services find each other by name and port, Prometheus scrapes voicebot's
/metrics, and every PromQL expression of the Grafana dashboard parses and names only voicebot's metrics."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from deploy_checks import AGREED_METRICS, DEPLOY, DEPLOY_CONFIG, load_yaml_documents, promql_problems

COMPOSE = DEPLOY / "docker-compose.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
GRAFANA = DEPLOY / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def deploy_config() -> dict:
    return yaml.safe_load(DEPLOY_CONFIG.read_text(encoding="utf-8"))


def check_compose_schema(path: Path) -> subprocess.CompletedProcess:
    """check-jsonschema with the Compose specification schema it ships (vendor.compose-spec): offline."""
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                           str(path)], capture_output=True, text=True, timeout=120)


def test_compose_file_follows_the_compose_specification():
    result = check_compose_schema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_check_rejects_a_wrong_file(tmp_path):
    """The schema is strict where it matters: a misspelt service key and a condition Compose does not know
    are both refused."""
    data = compose()
    data["services"]["voicebot"]["stop_grace_periods"] = data["services"]["voicebot"].pop("stop_grace_period")
    data["services"]["voicebot"]["depends_on"]["postgres"]["condition"] = "healthy"
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(yaml.safe_dump(data))
    result = check_compose_schema(bad)
    assert result.returncode != 0
    assert "stop_grace_periods" in result.stdout and "'healthy' is not one of" in result.stdout, result.stdout


def bind_mounts(service: dict) -> list[tuple[Path, str]]:
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append(((DEPLOY / source).resolve(), target))
    return mounts


def test_every_bind_mount_exists():
    for name, service in compose()["services"].items():
        for source, target in bind_mounts(service):
            assert source.exists(), f"services.{name}: {source} (mounted at {target}) does not exist"
    build = compose()["services"]["voicebot"]["build"]
    assert ((DEPLOY / build["context"]) / build["dockerfile"]).resolve() == (DEPLOY / "Dockerfile").resolve()


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert match and duration, f"unexpected duration {duration!r}"
    return int(match.group(1) or 0) * 60 + int(match.group(2) or 0)


def test_voicebot_service_runs_the_deployed_config():
    service = compose()["services"]["voicebot"]
    config = deploy_config()
    mounts = {target: source for source, target in bind_mounts(service)}
    config_path = service["environment"]["VOICEBOT_CONFIG"]
    assert mounts[config_path] == DEPLOY_CONFIG
    dialplans = str(Path(config_path).parent / config["dialplans"])
    assert mounts[dialplans] == (DEPLOY.parent / "dialplans").resolve()
    assert "voicebot-data:/var/lib/voicebot" in service["volumes"]
    assert f"127.0.0.1:{config['server']['port']}:{config['server']['port']}" in service["ports"]
    # SIGTERM drains for server.drain_seconds, then the goodbye plays: Docker must not SIGKILL before.
    assert seconds(service["stop_grace_period"]) >= config["server"]["drain_seconds"] + 10
    assert service["read_only"] is True and service["cap_drop"] == ["ALL"]


def test_database_url_reaches_the_postgres_service():
    services = compose()["services"]
    url = urlsplit(services["voicebot"]["environment"]["VOICEBOT_DATABASE_URL"])
    postgres = services["postgres"]["environment"]
    assert url.scheme == "postgresql" and url.hostname == "postgres" and url.port == 5432
    assert url.username == postgres["POSTGRES_USER"] and url.path == "/" + postgres["POSTGRES_DB"]
    assert url.password == "${POSTGRES_PASSWORD:-voicebot}" == postgres["POSTGRES_PASSWORD"]
    assert services["voicebot"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_prometheus_scrapes_voicebot_metrics():
    config = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))
    services = compose()["services"]
    mounts = {target: source for source, target in bind_mounts(services["prometheus"])}
    assert mounts["/etc/prometheus/prometheus.yml"] == PROMETHEUS
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    job = jobs["voicebot"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for static in job["static_configs"] for t in static["targets"]]
    assert targets == [f"voicebot:{deploy_config()['server']['port']}"]
    assert "voicebot" in services


def test_grafana_provisions_the_datasource_and_the_dashboards():
    services = compose()["services"]
    mounts = {target: source for source, target in bind_mounts(services["grafana"])}
    provisioning = mounts["/etc/grafana/provisioning"]
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    url = urlsplit(datasource["url"])
    assert datasource["type"] == "prometheus" and url.hostname == "prometheus" and url.port == 9090
    assert "127.0.0.1:9090:9090" in services["prometheus"]["ports"]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "voicebot.yml").read_text())["providers"]
    assert mounts[provider["options"]["path"]] == GRAFANA / "dashboards"
    assert DASHBOARDS, "no dashboard JSON"
    for path in DASHBOARDS:
        for panel in panels(json.loads(path.read_text(encoding="utf-8"))):
            for source in [panel.get("datasource"), *(t.get("datasource") for t in panel.get("targets", []))]:
                assert source is None or source["uid"] == datasource["uid"], (path.name, panel["title"], source)


def panels(dashboard: dict) -> list[dict]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def expressions(dashboard: dict) -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in panels(dashboard) for target in panel.get("targets", [])]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_queries_name_only_voicebot_metrics(path):
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    queries = expressions(dashboard)
    problems = [f"{title}: {problem}" for title, expr in queries for problem in promql_problems(expr)]
    assert not problems, "\n".join(problems)
    # The panels the issue asks for: active calls, first-audio and turn latency quantiles from the
    # histograms, calls by outcome, refusals, campaign outcomes.
    text = "\n".join(expr for _, expr in queries)
    for needed in (r"sum\(voicebot_active_calls\)",
                   r"histogram_quantile\(0\.95, sum by \(le\) \(rate\(voicebot_first_audio_seconds_bucket",
                   r"histogram_quantile\(0\.99, sum by \(le\) \(rate\(voicebot_turn_latency_seconds_bucket",
                   r"sum by \(outcome\) \(rate\(voicebot_calls_total",
                   r"sum by \(reason\) \(rate\(voicebot_stream_refusals_total",
                   r"sum by \(campaign, outcome\) \(rate\(voicebot_campaign_attempts_total"):
        assert re.search(needed, text), needed
    unused = set(AGREED_METRICS) - {name for name in AGREED_METRICS if name in text}
    assert not unused, f"metrics no panel shows: {sorted(unused)}"


def test_dashboard_layout_is_loadable():
    """What Grafana needs to import it: a uid, unique panel ids, every panel placed on the 24-column grid."""
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
        ids = [panel["id"] for panel in panels(dashboard)]
        assert len(ids) == len(set(ids)), ids
        for panel in panels(dashboard):
            grid = panel["gridPos"]
            assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, (panel["title"], grid)


@pytest.mark.parametrize("expr, problem", [
    ("sum(voicebot_active_call)", "'voicebot_active_call' is not a series"),
    ("rate(voicebot_first_audio_seconds[5m])", "'voicebot_first_audio_seconds' is not a series"),
    ("sum by (reasons) (rate(voicebot_stream_refusals_total[5m]))", "by (reasons)"),
    ('voicebot_calls_total{call_id="CA1"}', "has no label 'call_id'"),
    ("sum(rate(voicebot_calls_total[$__rate_interval])", "unclosed left parenthesis"),
    ("sum(rate(voicebot_calls_total[$window]))", "unknown template variable"),
])
def test_promql_check_catches(expr, problem):
    """The check above is a real one: a misspelt metric, a histogram without its _bucket, an unknown label,
    a syntax error and an unknown variable are each reported."""
    problems = promql_problems(expr)
    assert problems and problem in " ".join(problems), problems


def test_prometheus_config_only_scrapes(tmp_path):
    """prometheus.yml holds no rule files or remote writes that the compose stack does not mount."""
    config = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))
    assert set(config) <= {"global", "scrape_configs"}, set(config)
    assert load_yaml_documents(PROMETHEUS) == [config]


def test_readme_production_section_names_real_files_and_commands():
    """README's "Running in production": every deploy/ path it names exists, every compose command uses the
    compose file, and the proxy timeouts it shows outlast the example dialplans' longest call."""
    readme = (DEPLOY.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Running in production", 1)[1].split("\n## ", 1)[0]
    for path in set(re.findall(r"deploy/[\w./-]*[\w/]", section)) - {"deploy/.env"}:   # the operator's, gitignored
        assert (DEPLOY.parent / path).exists(), f"README names {path}, which does not exist"
    commands = re.findall(r"(?m)^docker compose .*$", section)
    assert commands and all(c.startswith("docker compose -f deploy/docker-compose.yml ") for c in commands), commands
    assert "docker compose -f deploy/docker-compose.yml up --build -d" in commands[0]
    from voicebot.dialplan import load_dialplan
    longest = max(p.max_call_seconds for p in load_dialplan(DEPLOY.parent / "dialplans").personas)
    for timeout in re.findall(r"proxy_(?:read|send)_timeout (\d+)s;", section):
        assert int(timeout) > longest
