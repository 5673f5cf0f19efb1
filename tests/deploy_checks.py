"""What the tests of deploy/ share: the files, the agreed metric names, PromQL read by a real parser, and a
``voicebot serve`` of the deployed config on a free loopback port."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import promql_parser
import pytest
import yaml

from voicebot.config import ConfigError, load_settings

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
DEPLOY_CONFIG = DEPLOY / "config.yaml"

def _published_metrics() -> dict[str, tuple[str, frozenset[str]]]:
    """The metrics voicebot/metrics.py defines, as a scrape names them (a counter with its _total), with their
    kind and labels: the dashboards and the autoscaler are checked against the code, not a copy of it."""
    from prometheus_client.metrics import MetricWrapperBase

    from voicebot import metrics
    published = {}
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase):
            name = metric._name + ("_total" if metric._type == "counter" else "")
            published[name] = (metric._type, frozenset(metric._labelnames))
    return published


AGREED_METRICS = _published_metrics()
# Labels Prometheus itself attaches to every scraped series (the target's), usable in any aggregation.
TARGET_LABELS = frozenset({"instance", "job"})


def exposed_series() -> dict[str, frozenset[str]]:
    """Every series name a scrape of /metrics can carry → its labels (a histogram's buckets also carry le)."""
    series: dict[str, frozenset[str]] = {}
    for name, (kind, labels) in AGREED_METRICS.items():
        if kind == "histogram":
            series[f"{name}_bucket"] = labels | {"le"}
            series[f"{name}_sum"] = labels
            series[f"{name}_count"] = labels
        else:
            series[name] = labels
    return series


# Grafana's own variables, replaced by what Grafana would send so that the parser sees plain PromQL.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


def parse_promql(expr: str):
    """A PromQL expression as Prometheus' grammar reads it (promql-parser); Grafana variables substituted.
    Raises ValueError on a syntax error or an unknown variable."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    if "$" in expr:
        raise ValueError(f"unknown template variable in {expr!r}")
    return promql_parser.parse(expr)


def promql_problems(expr: str) -> list[str]:
    """What is wrong with one expression against the exposed series: a syntax error, a series no voicebot
    metric exposes, a label it does not carry (in a matcher or in ``by (...)``)."""
    try:
        tree = parse_promql(expr)
    except ValueError as exc:
        return [f"{expr!r}: {exc}"]
    series = exposed_series()
    problems: list[str] = []

    def selectors_in(node) -> list:
        found: list = []
        promql_parser.walk(node, pre_visit=lambda n: found.append(n) if isinstance(n, promql_parser.VectorSelector)
                           else None)
        return found

    for selector in selectors_in(tree):
        if selector.name not in series:
            problems.append(f"{expr!r}: {selector.name!r} is not a series of any agreed voicebot metric")
            continue
        for matcher in selector.matchers.matchers:
            if matcher.name not in series[selector.name] | TARGET_LABELS:
                problems.append(f"{expr!r}: {selector.name} has no label {matcher.name!r}")

    def check_aggregation(node) -> None:
        if isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None \
                and node.modifier.type == promql_parser.AggModifierType.By:
            inside = [s.name for s in selectors_in(node.expr) if s.name in series]
            known = set(TARGET_LABELS).union(*(series[name] for name in inside))
            for label in node.modifier.labels:
                if label not in known:
                    problems.append(f"{expr!r}: by ({label}) but no series inside carries {label!r}")

    promql_parser.walk(tree, pre_visit=check_aggregation)
    return problems


def load_yaml_documents(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def config_keys_accepted(tmp_path: Path, **server_keys) -> bool:
    """Whether this checkout's config loader knows these ``server:`` keys (they arrive with other branches of
    issue 14: drain_seconds, max_calls)."""
    probe = tmp_path / "probe-config.yaml"
    probe.write_text(yaml.safe_dump({"server": server_keys}))
    try:
        load_settings(probe, environ={})
    except ConfigError as exc:
        if "unknown field" in exc.problem:
            return False
        raise
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def deployed_config_copy(folder: Path, port: int) -> Path:
    """deploy/config.yaml as shipped, but on a loopback port of this test and with its data folder (the
    containers' /var/lib/voicebot) and dialplans inside ``folder``."""
    text = DEPLOY_CONFIG.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    text = text.replace("/var/lib/voicebot", str(folder / "data"))
    text = re.sub(r"(?m)^(  host:) 0\.0\.0\.0", r"\1 127.0.0.1", text)
    text = re.sub(rf"(?m)^(  port:) {data['server']['port']}\b", rf"\1 {port}", text)
    copy = folder / "config.yaml"
    copy.write_text(text, encoding="utf-8")
    (folder / "data").mkdir()
    (folder / data["dialplans"]).symlink_to(REPO / "dialplans")
    return copy


class DeployedServer:
    """``voicebot serve`` of deploy/config.yaml (see deployed_config_copy), as the containers run it."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.config = deployed_config_copy(folder, self.port)
        self.log_path = folder / "server.log"
        env = {k: v for k, v in os.environ.items()
               if k not in ("STEP_API_KEY", "VOICEBOT_STREAM_SECRET", "VOICEBOT_DATABASE_URL", "STEPFUN_BASE_URL")}
        env["VOICEBOT_CONFIG"] = str(self.config)
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "voicebot.cli", "serve"], cwd=folder, env=env,
                                         stdout=log, stderr=subprocess.STDOUT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_up(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"voicebot serve exited {self.proc.returncode}:\n{self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"the server did not answer /healthz within {timeout_s} s:\n{self.log_path.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _server_keys_rejected() -> list[str]:
    """deploy/config.yaml's ``server:`` keys that this checkout's config loader does not know yet."""
    import tempfile

    keys = yaml.safe_load(DEPLOY_CONFIG.read_text(encoding="utf-8"))["server"]
    rejected = []
    with tempfile.TemporaryDirectory() as folder:
        for key in ("drain_seconds", "max_calls"):
            if key in keys and not config_keys_accepted(Path(folder), **{key: keys[key]}):
                rejected.append(key)
    return rejected


def _served_paths() -> set[str]:
    from voicebot.config import Settings
    from voicebot.dialplan import load_dialplan
    from voicebot.server import create_app

    app = create_app(Settings(source="probe"), load_dialplan(REPO / "dialplans"))
    return {resource.canonical for resource in app.router.resources()}


# Parts of issue 14 that other branches bring (the drain and limits keys, /readyz). Until they are merged the
# tests that need them are expected to fail, and strict: once they are in, the markers must go.
SERVER_KEYS_PENDING = _server_keys_rejected()
pending_server_keys = pytest.mark.xfail(
    bool(SERVER_KEYS_PENDING), strict=True,
    reason=f"config loader does not know server.{', server.'.join(SERVER_KEYS_PENDING)} yet (issue 14 drain/limits)")
pending_readyz = pytest.mark.xfail(
    "/readyz" not in _served_paths(), strict=True, reason="the server has no /readyz yet (issue 14 health and drain)")
