"""The Kubernetes manifests and the compose file validate against their schemas."""

import os
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.conftest import REPO

K8S = sorted((REPO / "deploy" / "k8s").glob("*.yaml"))
KUBERNETES_VERSION = "1.30.0"  # the oldest version still in upstream support when written


@pytest.mark.parametrize("path", K8S, ids=lambda p: p.name)
def test_kubernetes_manifest_is_valid(path: Path) -> None:
    for document in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_deployment_probes_use_the_health_endpoints() -> None:
    deployment = yaml.safe_load((REPO / "deploy" / "k8s" / "deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]

    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["lifecycle"]["preStop"]
    assert container["resources"]["limits"]["cpu"]


def test_kubernetes_validation_catches_a_broken_manifest() -> None:
    deployment = yaml.safe_load((REPO / "deploy" / "k8s" / "deployment.yaml").read_text())
    deployment["spec"]["replicas"] = "two"

    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.mark.skipif(
    shutil.which("docker-compose") is None and not os.environ.get("CI"),
    reason="docker-compose is not installed (CI installs Debian's)",
)
def test_compose_file_is_valid() -> None:
    result = subprocess.run(
        ["docker-compose", "-f", str(REPO / "docker-compose.yml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )

    assert result.returncode == 0, result.stderr
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    assert {"classifier-1", "classifier-2", "lb"} <= set(services)
