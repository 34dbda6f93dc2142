"""deploy/k8s/replicas: N gateways on PostgreSQL and S3, consistent with the base manifests."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.config import load_config

OVERLAY = Path(__file__).resolve().parent.parent / "deploy" / "k8s" / "replicas"
ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


def load(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((OVERLAY / name).read_text()) if d]


def test_overlay_lists_existing_files_and_drops_the_sqlite_volume() -> None:
    (kustomization,) = load("kustomization.yaml")
    assert "../" in kustomization["resources"]
    for name in kustomization["resources"][1:]:
        assert (OVERLAY / name).is_file()
    for patch in kustomization["patches"]:
        if "path" in patch:
            assert (OVERLAY / patch["path"]).is_file()
        else:
            assert "$patch: delete" in patch["patch"]
            assert patch["target"]["name"] == "batch-gateway-data"


def test_overlay_manifests_match_kubernetes_schemas() -> None:
    version = kubernetes_validate.latest_version()
    for name in ("postgres.yaml", "secrets.example.yaml"):
        for doc in load(name):
            kubernetes_validate.validate(doc, version, strict=True)


def test_replicas_roll_and_take_store_settings_from_the_secret() -> None:
    (deployment,) = load("deployment-patch.yaml")
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    (secret,) = load("secrets.example.yaml")
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert all(ref["name"] == secret["metadata"]["name"] for ref in refs.values())
    assert all(ref["key"] in secret["stringData"] for ref in refs.values())
    # The database URL points at the overlay's PostgreSQL Service.
    service = next(d for d in load("postgres.yaml") if d["kind"] == "Service")
    assert f"@{service['metadata']['name']}:5432/" in secret["stringData"]["PG_URL"]


def test_replica_config_is_postgres_and_s3_without_local_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (configmap,) = load("configmap-patch.yaml")
    text = configmap["data"]["config.yaml"]
    (deployment,) = load("deployment-patch.yaml")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    base = yaml.safe_load((OVERLAY.parent / "deployment.yaml").read_text())
    (base_container,) = base["spec"]["template"]["spec"]["containers"]
    provided = {e["name"] for e in container["env"] + base_container["env"]}
    assert set(ENV_VAR.findall(text)) <= provided  # every variable is set by the pod
    for name in provided:
        monkeypatch.setenv(name, "sk-test-value")
    monkeypatch.setenv("PG_URL", "postgresql://gateway:pw@postgres:5432/gateway")
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://minio:9000")
    path = tmp_path / "config.yaml"
    path.write_text(text)
    config = load_config(path)
    assert config.store.url.startswith("postgresql://")
    assert config.blobs.s3 is not None
    # Nothing on a pod's disk: no volume outlives the pod, no config names a folder.
    assert "sandbox" not in config.providers
    assert "dir:" not in text
    (volume,) = deployment["spec"]["template"]["spec"]["volumes"]
    assert volume == {"name": "data", "emptyDir": {}}
    assert config.poller.lease_seconds > config.poller.interval_seconds
