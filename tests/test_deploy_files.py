"""deploy/ is checked without a cluster or a Docker engine: promtool on the Prometheus files,
Kubernetes' own schemas on the manifests, and cross-references between files (ports, paths,
names, secret keys) that no single tool sees."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.config import Config, load_config
from tests.support import enabled_providers, sqlite_path

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
PROM = DEPLOY / "prometheus"
K8S = DEPLOY / "k8s"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "batch-gateway.json"
ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}")


def promtool(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess[str]:
    """Run promtool; missing promtool is a failure, since CI installs it (.ci/run)."""
    exe = shutil.which("promtool")
    assert exe, "promtool is missing: install Debian's `prometheus` package (.ci/run does)"
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(PROM / "alerts.yml")["groups"] for rule in group["rules"]]


def test_prometheus_config_passes_promtool() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_pass_promtool() -> None:
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_alert_unit_tests_pass() -> None:
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in load_yaml(PROM / "alerts_test.yml")["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names == firing, "every alert needs a test where it fires"
    assert names == quiet, "every alert needs a test where it stays quiet"
    asked_for = {"GatewayDown", "ProviderErrorRateHigh", "CircuitBreakerOpen", "BatchesStuck"}
    assert asked_for | {"BatchFailureRatioHigh"} <= names


def test_alerts_carry_severity_summary_and_description() -> None:
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert {"summary", "description"} <= rule["annotations"].keys(), rule["alert"]


def test_prometheus_scrapes_the_compose_gateway_and_loads_the_alerts() -> None:
    config = load_yaml(PROM / "prometheus.yml")
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "batch-gateway"  # what the dashboard and GatewayDown select
    assert job["metrics_path"] == "/metrics"
    port = load_config(DEPLOY / "config.docker.yaml").server.port
    assert job["static_configs"][0]["targets"] == [f"gateway:{port}"]
    assert config["rule_files"] == ["alerts.yml"]


def test_prometheusrule_has_the_same_rules_as_alerts_file() -> None:
    """Operator users get exactly the alerts that promtool tested."""
    rule = load_yaml(K8S / "prometheusrule.yaml")
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"] == load_yaml(PROM / "alerts.yml")


def dashboard_panels() -> list[dict[str, Any]]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "batch-gateway"
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["provider"]["allValue"] == ".*"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    panels = dashboard_panels()
    assert len(panels) >= 15
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            # Only variables the live test knows how to substitute.
            used = set(re.findall(r"\$\{?(\w+)", target["expr"]))
            assert used <= {"provider", "__rate_interval"}, (panel["title"], used)


def test_dashboard_covers_what_operators_asked_for() -> None:
    exprs = " ".join(t["expr"] for p in dashboard_panels() for t in p["targets"])
    for metric in (
        "gateway_http_requests_total",
        "gateway_http_request_duration_seconds_bucket",
        "gateway_upstream_requests_total",
        "gateway_circuit_breaker_state",
        "gateway_fallbacks_total",
        "gateway_batches{",
        "gateway_batch_requests_total",
        "gateway_batch_completion_seconds_bucket",
        "gateway_upstream_repairs_total",
        "gateway_shard_children_per_batch_bucket",
        "gateway_shard_children_total",
        "gateway_heal_lines_total",
        "gateway_healed_lines_total",
        "gateway_shard_failed_lines_total",
    ):
        assert metric in exprs, metric


def test_grafana_provisioning_matches_compose_mounts() -> None:
    compose = load_yaml(DEPLOY / "docker-compose.yml")
    grafana = compose["services"]["grafana"]
    mounts = dict(v.rsplit(":", 2)[:2] for v in grafana["volumes"] if v.startswith("./"))
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    (provider,) = load_yaml(DEPLOY / "grafana/provisioning/dashboards/dashboards.yml")["providers"]
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"
    (source,) = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in compose["services"]


def test_compose_mounts_exist_and_pass_provider_keys() -> None:
    compose = load_yaml(DEPLOY / "docker-compose.yml")
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"
    gateway = compose["services"]["gateway"]
    assert (DEPLOY / gateway["build"]["context"] / gateway["build"]["dockerfile"]).is_file()
    assert "./config.docker.yaml:/etc/batch-gateway/config.yaml:ro" in gateway["volumes"]
    needed = set(ENV_VAR.findall((DEPLOY / "config.docker.yaml").read_text()))
    assert needed and needed <= gateway["environment"].keys()
    assert "./prometheus:/etc/prometheus:ro" in compose["services"]["prometheus"]["volumes"]


def state_dirs(config: Config) -> list[Path]:
    """Every path the gateway may write: the SQLite file, blobs, and providers' legacy folders
    (earlier versions' state, imported once and renamed)."""
    dirs = [config.blobs.dir]
    db = sqlite_path(config)
    assert db is not None
    dirs.append(db)
    dirs += [p.dir for p in config.providers.values() if isinstance(getattr(p, "dir", None), Path)]
    return dirs


def test_docker_config_keeps_state_on_the_image_volume(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (DEPLOY / "config.docker.yaml").read_text()
    for var in ENV_VAR.findall(text):
        monkeypatch.delenv(var, raising=False)
    config = load_config(DEPLOY / "config.docker.yaml")
    assert len(state_dirs(config)) >= 3
    for path in state_dirs(config):
        assert path.parent == Path("/var/lib/batch-gateway"), path
    assert config.server.host == "0.0.0.0"
    # No keys: the stack still starts, on the sandbox.
    assert list(enabled_providers(config)) == ["sandbox"]


def test_dockerfile_runs_the_mounted_config_as_non_root() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert text.startswith("# ") and "FROM python:3.11-slim" in text
    for source in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for path in source.split():
            assert (REPO / path).exists(), path
    assert re.search(r"^USER 10001", text, re.M)
    assert "/health/live" in re.search(r"^HEALTHCHECK .*(\n .*)*", text, re.M)[0]  # type: ignore[index]
    assert 'VOLUME ["/var/lib/batch-gateway"]' in text
    port = load_config(DEPLOY / "config.docker.yaml").server.port
    assert f"EXPOSE {port}" in text
    assert '"--config", "/etc/batch-gateway/config.yaml"' in text


def k8s_resources() -> list[dict[str, Any]]:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    docs = []
    for name in kustomization["resources"]:
        docs.extend(d for d in yaml.safe_load_all((K8S / name).read_text()) if d)
    return docs


def by_kind(kind: str) -> dict[str, Any]:
    (doc,) = [d for d in k8s_resources() if d["kind"] == kind]
    return doc


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    listed = set(load_yaml(K8S / "kustomization.yaml")["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk - {"secret.example.yaml"}


def test_k8s_manifests_match_kubernetes_schemas() -> None:
    version = kubernetes_validate.latest_version()
    operator_kinds = {"ServiceMonitor", "PrometheusRule"}
    docs = [*k8s_resources(), load_yaml(K8S / "secret.example.yaml")]
    for doc in docs:
        if doc["kind"] in operator_kinds:
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        kubernetes_validate.validate(doc, version, strict=True)  # raises on any mistake


def test_k8s_deployment_probes_ports_and_service_agree() -> None:
    deployment, service = by_kind("Deployment"), by_kind("Service")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "http"}
    assert container["startupProbe"]["httpGet"]["port"] in ports
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports.keys()
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["http"]
    assert annotations["prometheus.io/path"] == "/metrics"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["args"][container["args"].index("--port") + 1] == str(ports["http"])


def test_k8s_service_monitor_selects_the_service() -> None:
    monitor, service = by_kind("ServiceMonitor"), by_kind("Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    # The operator names the job after the Service; the alerts select job="batch-gateway".
    assert service["metadata"]["name"] == "batch-gateway"


def test_k8s_provider_keys_come_from_the_secret_by_reference() -> None:
    deployment = by_kind("Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    secret = load_yaml(K8S / "secret.example.yaml")
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert all("value" not in e for e in container["env"]), "keys must not be inlined"
    for ref in refs.values():
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["stringData"]
    config_text = by_kind("ConfigMap")["data"]["config.yaml"]
    assert set(ENV_VAR.findall(config_text)) == refs.keys()


def test_k8s_config_is_valid_and_mounted_where_serve_reads_it(tmp_path: Path) -> None:
    deployment, configmap = by_kind("Deployment"), by_kind("ConfigMap")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(configmap["data"]["config.yaml"])
    config = load_config(config_file)
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["config"]["configMap"]["name"] == configmap["metadata"]["name"]
    args = container["args"]
    assert args[args.index("--config") + 1] == f"{mounts['config']}/config.yaml"
    claim = volumes["data"]["persistentVolumeClaim"]["claimName"]
    assert claim == by_kind("PersistentVolumeClaim")["metadata"]["name"]
    for path in state_dirs(config):
        assert path.parent == Path(mounts["data"]), path
    assert deployment["spec"]["replicas"] == 1  # SQLite: one writer
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
