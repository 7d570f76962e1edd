"""docker-compose.yml wires the control plane to its services (no engine runs here)."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).parent.parent


def test_compose_runs_every_part_with_its_settings() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "s3", "web", "worker"} <= set(services)
    for name in ("web", "worker"):
        env = services[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgres://")
        assert env["CELERY_BROKER_URL"].startswith("redis://redis:")
        assert env["FIREWORK_STORE"] == "s3"
        assert env["S3_ENDPOINT_URL"] == "http://s3:8333"
        assert {"postgres", "redis", "s3"} <= set(services[name]["depends_on"])


def test_published_ports_stay_on_loopback() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_web_and_worker_count_metrics_into_one_in_memory_volume() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    for name in ("web", "worker"):
        directory = services[name]["environment"]["PROMETHEUS_MULTIPROC_DIR"]
        assert f"metrics:{directory}" in services[name]["volumes"]
    assert compose["volumes"]["metrics"]["driver_opts"]["type"] == "tmpfs"


def test_web_runs_gunicorn_with_the_shipped_settings() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    command = " ".join(compose["services"]["web"]["command"])
    assert (
        "gunicorn -c python:firework_site.gunicorn_conf firework_site.wsgi" in command
    )
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert '"-c", "python:firework_site.gunicorn_conf"' in dockerfile
