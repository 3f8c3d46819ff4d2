"""docker-compose.yml, validated without a Docker engine by Debian's docker-compose (1.29)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from refloop.temporal import SEARCH_ATTRIBUTES, search_attribute_flags

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = shutil.which("docker-compose")
pytestmark = pytest.mark.skipif(COMPOSE is None, reason="docker-compose is not installed (scripts/setup installs it)")


def config(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [COMPOSE, "-f", str(path), "config"], cwd=path.parent, capture_output=True, text=True, env=env, timeout=60  # type: ignore[list-item]
    )


@pytest.fixture(scope="module")
def resolved() -> dict:
    out = config(ROOT / "docker-compose.yml")
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def test_the_validator_rejects_a_broken_file(tmp_path):
    """The check has teeth: a dangling depends_on fails it."""
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    data["services"]["worker"]["depends_on"]["no-such-service"] = {"condition": "service_healthy"}
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(data))
    out = config(broken)
    assert out.returncode != 0 and "no-such-service" in out.stderr


def test_services_and_their_start_order(resolved):
    services = resolved["services"]
    assert {"postgresql", "temporal-schema", "temporal", "temporal-init", "temporal-ui", "worker", "gateway", "orthanc"} <= set(services)
    assert services["orthanc"]["profiles"] == ["pacs"]  # optional
    cond = lambda svc: {name: dep["condition"] for name, dep in services[svc]["depends_on"].items()}  # noqa: E731
    assert cond("temporal-schema") == {"postgresql": "service_healthy"}
    assert cond("temporal") == {"temporal-schema": "service_completed_successfully"}
    assert cond("temporal-init") == {"temporal": "service_healthy"}
    for svc in ("worker", "gateway"):
        assert cond(svc) == {"postgresql": "service_healthy", "temporal-init": "service_completed_successfully"}
    for svc in ("postgresql", "temporal", "worker", "gateway"):
        assert services[svc]["healthcheck"]["test"], svc
    # Temporal on PostgreSQL for both persistence and visibility (no Elasticsearch).
    env = services["temporal"]["environment"]
    assert env["DB"] == "postgres12" and "ENABLE_ES" not in env
    assert "visibility/versioned" in services["temporal-schema"]["command"][0]


def test_workers_scale_and_the_gateway_runs_no_worker(resolved):
    worker, gateway = resolved["services"]["worker"], resolved["services"]["gateway"]
    assert worker["deploy"]["replicas"] == 2
    assert "ports" not in worker and "container_name" not in worker  # nothing that stops --scale
    assert worker["command"] == ["worker"] and gateway["command"] == ["gateway"]
    assert gateway["environment"]["REFLOOP_BIND_HOST"] == "0.0.0.0"
    assert all(p["host_ip"] == "127.0.0.1" for p in _ports(gateway))  # not exposed by default
    env = {"PATH": "/usr/bin:/bin", "REFLOOP_WORKERS": "5", "REFLOOP_PUBLISH_HOST": "0.0.0.0"}
    scaled = yaml.safe_load(config(ROOT / "docker-compose.yml", env).stdout)["services"]
    assert scaled["worker"]["deploy"]["replicas"] == 5
    assert all(p["host_ip"] == "0.0.0.0" for p in _ports(scaled["gateway"]))


def test_registered_search_attributes_are_ours(resolved):
    declared = resolved["services"]["temporal-init"]["environment"]["SEARCH_ATTRIBUTES"].split()
    flags = search_attribute_flags()  # ["--search-attribute", "Name=Type", ...], as the dev server gets them
    assert sorted(declared) == sorted(flags[1::2])
    assert len(declared) == len(SEARCH_ATTRIBUTES)


def test_dockerfile_installs_the_package_and_runs_unprivileged():
    text = (ROOT / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM python:3.11-slim" in text
    assert "RUN pip install ." in text
    user = [line for line in text.splitlines() if line.startswith("USER ")]
    assert user and user[-1].split()[1] not in ("root", "0")
    for part in ("refloop", "workflows", "activities", "workers"):  # every package the wheel needs
        assert f"COPY {part} " in text


def _ports(service: dict) -> list[dict]:
    return [p if isinstance(p, dict) else {"host_ip": p.split(":")[0]} for p in service["ports"]]
