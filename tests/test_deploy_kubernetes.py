"""deploy/kubernetes/: every manifest valid against the Kubernetes API schemas (kubernetes-validate, strict, on
pinned versions, offline), the manifests consistent with one another and with the config they mount, the
ConfigMap's config.yaml and dialplans loaded by voicebot's own loaders, and the probes answered by a real
``voicebot serve`` of that config."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from deploy_checks import (AGREED_METRICS, DEPLOY, DEPLOY_CONFIG, REPO, DeployedServer, load_yaml_documents,
                           parse_promql, pending_readyz, pending_server_keys)
from voicebot.config import load_settings
from voicebot.dialplan import load_dialplan

KUBERNETES = DEPLOY / "kubernetes"
# The oldest Kubernetes these manifests are for (the preStop sleep action is on by default from 1.30) and a
# recent one; both are bundled with kubernetes-validate, so the check needs no network.
KUBERNETES_VERSIONS = ("1.30.0", "1.35.0")
SECRET_TEMPLATE = KUBERNETES / "secret.template.yaml"
MANIFESTS = sorted(p for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")


def resources() -> dict[tuple[str, str], dict]:
    """(kind, name) → resource, over every manifest."""
    found = {}
    for path in MANIFESTS:
        for doc in load_yaml_documents(path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in found, f"{key} defined twice"
            found[key] = doc
    return found


def resource(kind: str, name: str = "voicebot") -> dict:
    return resources()[(kind, name)]


def pod_spec() -> dict:
    return resource("Deployment")["spec"]["template"]["spec"]


def container() -> dict:
    (only,) = pod_spec()["containers"]
    return only


def configmap_config_text() -> str:
    return resource("ConfigMap", "voicebot-config")["data"]["config.yaml"]


def configmap_config() -> dict:
    return yaml.safe_load(configmap_config_text())


def dialplan_files() -> dict[str, str]:
    return resource("ConfigMap", "voicebot-dialplans")["data"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_kubernetes(path, version):
    """Strict: an unknown field is an error, and so is a kind the schemas do not have."""
    docs = load_yaml_documents(path)
    assert docs
    for doc in docs:
        assert kubernetes_validate.validate(doc, version, strict=True) == version.rsplit(".", 1)[0]


def test_validation_is_strict_and_offline_schemas_are_there():
    deployment = resource("Deployment")
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 60
    with pytest.raises(kubernetes_validate.ValidationError, match="terminationGracePeriodSecond"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)
    hpa = resource("HorizontalPodAutoscaler")
    hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"] = {"calls": 60}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(hpa, KUBERNETES_VERSIONS[0], strict=True)
    with pytest.raises(kubernetes_validate.utils.SchemaNotFoundError):
        kubernetes_validate.validate({**hpa, "apiVersion": "autoscaling/v2beta3"}, KUBERNETES_VERSIONS[0], strict=True)


def test_kustomization_applies_every_manifest_but_the_secret_template():
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(p.name for p in MANIFESTS if p != SECRET_TEMPLATE)


def test_configmap_carries_the_deployed_config_and_the_dialplans_verbatim():
    """One configuration for every deployment: the ConfigMap is deploy/config.yaml and dialplans/*.yaml."""
    assert configmap_config_text() == DEPLOY_CONFIG.read_text(encoding="utf-8"), \
        "deploy/kubernetes/configmap.yaml: config.yaml differs from deploy/config.yaml"
    repo_dialplans = {p.name: p.read_text(encoding="utf-8") for p in (REPO / "dialplans").glob("*.yaml")}
    assert dialplan_files() == repo_dialplans


def write_configmaps(folder: Path) -> Path:
    """The two ConfigMaps as the pod sees them: config.yaml, and the dialplans folder the config names."""
    config = folder / "config.yaml"
    config.write_text(configmap_config_text(), encoding="utf-8")
    dialplans = folder / configmap_config()["dialplans"]
    dialplans.mkdir()
    for name, text in dialplan_files().items():
        (dialplans / name).write_text(text, encoding="utf-8")
    return config


def test_configmap_dialplans_load_with_the_dialplan_loader(tmp_path):
    write_configmaps(tmp_path)
    plan = load_dialplan(tmp_path / configmap_config()["dialplans"])
    assert plan.default is not None and {p.name for p in plan.personas} >= {"acme-support-en", "acme-hotline-zh"}


@pending_server_keys
def test_configmap_config_loads_with_the_config_loader(tmp_path):
    config = write_configmaps(tmp_path)
    settings = load_settings(config, environ={"VOICEBOT_DATABASE_URL": secret_template()["VOICEBOT_DATABASE_URL"]})
    assert settings.dialplans_dir == tmp_path / "dialplans"
    assert settings.database_url.startswith("postgresql://") and settings.workers == 1
    assert settings.drain_seconds == configmap_config()["server"]["drain_seconds"]
    assert settings.max_calls == configmap_config()["server"]["max_calls"]


def mounts() -> dict[str, dict]:
    return {mount["mountPath"]: mount for mount in container()["volumeMounts"]}


def volume(name: str) -> dict:
    (found,) = [v for v in pod_spec()["volumes"] if v["name"] == name]
    return found


def test_pod_finds_config_and_dialplans_where_the_config_says():
    env = {item["name"]: item["value"] for item in container()["env"]}
    config_path = env["VOICEBOT_CONFIG"]
    config_mount = mounts()[config_path]
    assert config_mount["subPath"] == "config.yaml"
    assert volume(config_mount["name"])["configMap"]["name"] == "voicebot-config"
    dialplans = str(Path(config_path).parent / configmap_config()["dialplans"])
    dialplans_mount = mounts()[dialplans]
    # No subPath: an edited ConfigMap reaches the pod (dialplan reload); a subPath mount never updates.
    assert "subPath" not in dialplans_mount
    assert volume(dialplans_mount["name"])["configMap"]["name"] == "voicebot-dialplans"
    # The root filesystem is read-only: everything the server writes is under a writable mount.
    assert container()["securityContext"]["readOnlyRootFilesystem"] is True
    writable = [path for path, mount in mounts().items() if not mount.get("readOnly")]
    config = configmap_config()
    for written in (config["transcripts_dir"], config["recordings_dir"],
                    config["database"]["url"].removeprefix("sqlite:///")):
        assert any(written.startswith(path + "/") for path in writable), f"{written} is on the read-only root"


def test_runs_as_the_image_user_without_privileges():
    dockerfile_user = re.search(r"(?m)^USER (\d+):(\d+)$", (DEPLOY / "Dockerfile").read_text()).groups()
    security = pod_spec()["securityContext"]
    assert security["runAsNonRoot"] is True
    assert (str(security["runAsUser"]), str(security["runAsGroup"])) == dockerfile_user
    assert container()["securityContext"]["allowPrivilegeEscalation"] is False
    assert container()["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_grace_period_outlasts_prestop_and_drain():
    """Kubernetes SIGKILLs a pod terminationGracePeriodSeconds after it starts stopping (the preStop hook
    included): that must cover the preStop sleep, server.drain_seconds, the goodbye and the flush."""
    drain = float(configmap_config()["server"]["drain_seconds"])
    pre_stop = container()["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = pod_spec()["terminationGracePeriodSeconds"]
    assert grace >= pre_stop + drain + 10, (grace, pre_stop, drain)
    strategy = resource("Deployment")["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0, "an upgrade must not stop a pod before its successor"


def test_probes_and_ports():
    port = configmap_config()["server"]["port"]
    (http,) = container()["ports"]
    assert http == {"name": "http", "containerPort": port}
    assert container()["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container()["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container()["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    annotations = resource("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port) and annotations["prometheus.io/path"] == "/metrics"


def probe_status(server: DeployedServer, probe: str) -> int:
    path = container()[probe]["httpGet"]["path"]
    try:
        with urllib.request.urlopen(server.url + path, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture(scope="module")
def deployed_server(tmp_path_factory):
    server = DeployedServer(tmp_path_factory.mktemp("k8s-serve"))
    try:
        server.wait_up()
        yield server
    finally:
        assert server.stop() == 0, server.log_path.read_text()


@pending_server_keys
@pytest.mark.parametrize("probe", ["startupProbe", "livenessProbe"])
def test_liveness_probes_answer_on_a_running_server(deployed_server, probe):
    assert probe_status(deployed_server, probe) == 200


@pending_server_keys
@pending_readyz
def test_readiness_probe_answers_on_a_running_server(deployed_server):
    assert probe_status(deployed_server, "readinessProbe") == 200


def test_service_and_ingress_reach_the_pods_at_public_url():
    pod_labels = resource("Deployment")["spec"]["template"]["metadata"]["labels"]
    service = resource("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "http"
    ingress = resource("Ingress")
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert path["backend"]["service"] == {"name": service["metadata"]["name"], "port": {"name": port["name"]}}
    public = urlsplit(configmap_config()["server"]["public_url"])
    assert public.scheme == "https" and rule["host"] == public.hostname
    assert [public.hostname] in [tls["hosts"] for tls in ingress["spec"]["tls"]]


def test_ingress_timeouts_outlast_the_longest_call(tmp_path):
    write_configmaps(tmp_path)
    longest = max(p.max_call_seconds for p in load_dialplan(tmp_path / "dialplans").personas)
    annotations = resource("Ingress")["metadata"]["annotations"]
    for key in ("nginx.ingress.kubernetes.io/proxy-read-timeout", "nginx.ingress.kubernetes.io/proxy-send-timeout"):
        assert int(annotations[key]) > longest, (key, annotations[key], longest)


def test_autoscaler_scales_on_active_calls_per_pod_with_cpu_fallback():
    hpa = resource("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "voicebot")
    pods, cpu = hpa["spec"]["metrics"]
    name = pods["pods"]["metric"]["name"]
    assert pods["type"] == "Pods" and name == "voicebot_active_calls" and AGREED_METRICS[name][0] == "gauge"
    assert pods["pods"]["target"]["type"] == "AverageValue"
    # Scale out before a pod reaches its limit and refuses calls.
    assert int(pods["pods"]["target"]["averageValue"]) < configmap_config()["server"]["max_calls"]
    assert cpu["type"] == "Resource" and cpu["resource"]["name"] == "cpu"
    assert "cpu" in container()["resources"]["requests"], "CPU utilisation is measured against the request"
    assert hpa["spec"]["minReplicas"] >= 2


def test_prometheus_adapter_serves_the_metric_the_autoscaler_asks_for():
    values = yaml.safe_load((KUBERNETES / "prometheus-adapter" / "values.yaml").read_text())
    (rule,) = values["rules"]["custom"]
    hpa_metric = resource("HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert rule["name"]["as"] == hpa_metric and re.fullmatch(rule["name"]["matches"], hpa_metric)
    assert parse_promql(rule["seriesQuery"]).name == hpa_metric
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    assert rule["metricsQuery"].startswith("sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)")


def test_disruption_budget_lets_one_pod_go_at_a_time():
    pdb = resource("PodDisruptionBudget")
    pod_labels = resource("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    assert resource("HorizontalPodAutoscaler")["spec"]["minReplicas"] > pdb["spec"]["maxUnavailable"]


def secret_template() -> dict[str, str]:
    (secret,) = load_yaml_documents(SECRET_TEMPLATE)
    return secret["stringData"]


def test_secret_template_holds_placeholders_only_and_they_fail_safe(monkeypatch, tmp_path):
    values = secret_template()
    assert {"STEP_API_KEY", "TWILIO_AUTH_TOKEN", "VOICEBOT_STREAM_SECRET", "VOICEBOT_ADMIN_TOKEN",
            "VOICEBOT_DATABASE_URL"} <= set(values)
    for key, value in values.items():
        assert value == "" or "REPLACE-ME" in value, f"{key}: not a placeholder"
    (env_from,) = container()["envFrom"]
    assert env_from["secretRef"]["name"] == load_yaml_documents(SECRET_TEMPLATE)[0]["metadata"]["name"]
    # Applied unchanged, the server does not start: the placeholder is refused as a stream secret.
    from voicebot.telephony import twilio_auth
    monkeypatch.setenv(twilio_auth.STREAM_SECRET_ENV, values["VOICEBOT_STREAM_SECRET"])
    with pytest.raises(ValueError, match="too short"):
        twilio_auth.stream_token_secret()
    # An empty admin token keeps the admin API off; the database URL has the form the loader takes.
    assert values["VOICEBOT_ADMIN_TOKEN"] == ""
    minimal = tmp_path / "config.yaml"
    minimal.write_text("server: {port: 8080}\n")
    settings = load_settings(minimal, environ={"VOICEBOT_DATABASE_URL": values["VOICEBOT_DATABASE_URL"]})
    assert urlsplit(settings.database_url).scheme == "postgresql"
