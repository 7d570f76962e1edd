"""Enrichment: priority service > defaults > fallback, grouping, stable output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane.enrichment import run_pipeline
from tests.specrepo import base_service, write_repo


def enrich_services(tmp_path: Path, services: list[dict[str, Any]], defaults=None):
    result = run_pipeline(write_repo(tmp_path, services, defaults))
    assert result.ok, [str(e) for e in result.errors]
    return {
        node_type: {s["name"]: s for s in yaml.safe_load(text)["services"]}
        for node_type, text in result.configs.items()
    }


def test_fallbacks_of_the_original_apply_without_defaults(tmp_path: Path) -> None:
    web = enrich_services(tmp_path, [base_service("web")])["general-purpose"]["web"]
    assert web["kernel"] == "/var/lib/images/vmlinux-5.10"
    assert web["vcpus"] == 1
    assert web["memory_mb"] == 256
    assert (
        web["kernel_args"]
        == "console=ttyS0 reboot=k panic=1 pci=off init=/sbin/fc-init"
    )


@pytest.mark.parametrize(
    ("field", "fallback", "default", "own"),
    [
        ("kernel", "/var/lib/images/vmlinux-5.10", "/k/default", "/k/own"),
        ("vcpus", 1, 2, 4),
        ("memory_mb", 256, 512, 1024),
        (
            "kernel_args",
            "console=ttyS0 reboot=k panic=1 pci=off init=/sbin/fc-init",
            "d",
            "o",
        ),
        ("initrd", None, "/i/default", "/i/own"),
    ],
)
def test_service_beats_defaults_beats_fallback(
    tmp_path: Path, field: str, fallback: Any, default: Any, own: Any
) -> None:
    services = [base_service("plain"), base_service("own", **{field: own})]
    out = enrich_services(tmp_path / "a", services, {field: default})["general-purpose"]
    assert out["plain"][field] == default
    assert out["own"][field] == own
    bare = enrich_services(tmp_path / "b", [base_service("plain")])["general-purpose"]
    assert bare["plain"].get(field) == fallback


def test_health_check_is_merged_field_by_field(tmp_path: Path) -> None:
    defaults = {
        "health_check": {"type": "http", "port": 8080, "path": "/health", "retries": 5}
    }
    services = [base_service("web", health_check={"port": 9000, "interval": "2s"})]
    web = enrich_services(tmp_path, services, defaults)["general-purpose"]["web"]
    assert web["health_check"] == {
        "type": "http",
        "port": 9000,
        "path": "/health",
        "interval": "2s",
        "timeout": "5s",
        "retries": 5,
    }


def test_health_check_timing_fallbacks(tmp_path: Path) -> None:
    services = [base_service("web", health_check={"type": "tcp", "port": 5432})]
    web = enrich_services(tmp_path, services)["general-purpose"]["web"]
    assert web["health_check"] == {
        "type": "tcp",
        "port": 5432,
        "interval": "10s",
        "timeout": "5s",
        "retries": 3,
    }


def test_http_health_check_path_defaults_to_root(tmp_path: Path) -> None:
    services = [base_service("web", health_check={"type": "http", "port": 80})]
    web = enrich_services(tmp_path, services)["general-purpose"]["web"]
    assert web["health_check"]["path"] == "/"


def test_tcp_check_drops_the_inherited_http_path(tmp_path: Path) -> None:
    defaults = {"health_check": {"type": "http", "port": 8080, "path": "/health"}}
    services = [base_service("db", health_check={"type": "tcp", "port": 5432})]
    db = enrich_services(tmp_path, services, defaults)["general-purpose"]["db"]
    assert "path" not in db["health_check"]


def test_health_check_false_turns_off_the_default_one(tmp_path: Path) -> None:
    defaults = {"health_check": {"type": "tcp", "port": 1}}
    services = [base_service("web"), base_service("job", health_check=False)]
    out = enrich_services(tmp_path, services, defaults)["general-purpose"]
    assert out["web"]["health_check"]["port"] == 1
    assert "health_check" not in out["job"]


def test_default_health_check_is_skipped_with_a_warning_without_network(
    tmp_path: Path,
) -> None:
    defaults = {"health_check": {"type": "tcp", "port": 1}}
    repo = write_repo(tmp_path, [base_service("job", network=False)], defaults)
    result = run_pipeline(repo)
    assert result.ok
    assert "health_check" not in result.configs["general-purpose"]
    assert [str(w) for w in result.warnings] == [
        "services/job.yaml: service job: health_check from defaults skipped: no network"
    ]


def test_env_and_metadata_merge_with_service_values_winning(tmp_path: Path) -> None:
    defaults = {"env": {"LOG": "info", "REGION": "eu"}, "metadata": {"team": "a"}}
    services = [
        base_service("web", env={"LOG": "debug", "PORT": 80}, metadata={"v": 1})
    ]
    web = enrich_services(tmp_path, services, defaults)["general-purpose"]["web"]
    assert web["env"] == {"LOG": "debug", "PORT": "80", "REGION": "eu"}
    assert web["metadata"] == {"team": "a", "v": "1"}


@pytest.mark.parametrize(
    ("value", "text"), [(True, "true"), (False, "false"), (3, "3"), (2.5, "2.5")]
)
def test_env_scalars_become_the_strings_users_wrote(
    tmp_path: Path, value: Any, text: str
) -> None:
    web = enrich_services(tmp_path, [base_service("web", env={"X": value})])
    assert web["general-purpose"]["web"]["env"]["X"] == text


def test_network_true_becomes_a_tap_device(tmp_path: Path) -> None:
    long = "a-rather-long-service-name"
    out = enrich_services(tmp_path, [base_service("web"), base_service(long)])
    assert out["general-purpose"]["web"]["network"] == {"interface": "fw-web"}
    tap = out["general-purpose"][long]["network"]["interface"]
    assert len(tap) <= 15
    assert tap.startswith("fw-a-ra_")


def test_network_may_come_from_defaults_and_be_turned_off(tmp_path: Path) -> None:
    web = base_service("web")
    del web["network"]
    services = [web, base_service("job", network=False)]
    out = enrich_services(tmp_path, services, {"network": True})["general-purpose"]
    assert "network" in out["web"]
    assert "network" not in out["job"]


def test_services_are_grouped_by_node_type_and_sorted(tmp_path: Path) -> None:
    services = [
        base_service("zeta"),
        base_service("alpha"),
        base_service("batch", node_type="compute"),
    ]
    result = run_pipeline(write_repo(tmp_path, services))
    assert list(result.configs) == ["compute", "general-purpose"]
    assert result.services == {
        "compute": ["batch"],
        "general-purpose": ["alpha", "zeta"],
    }
    doc = yaml.safe_load(result.configs["general-purpose"])
    assert doc["node"] == "general-purpose"
    assert [s["name"] for s in doc["services"]] == ["alpha", "zeta"]


def test_node_type_may_come_from_defaults(tmp_path: Path) -> None:
    spec = base_service("web")
    spec.pop("node_type")
    out = enrich_services(tmp_path, [spec], {"node_type": "edge"})
    assert list(out) == ["edge"]


def test_output_is_byte_identical_whatever_the_input_order(tmp_path: Path) -> None:
    env = {f"K{i}": str(i) for i in range(20)}
    forward = dict(reversed(list(env.items())))
    one = run_pipeline(
        write_repo(tmp_path / "1", [base_service("a", env=env), base_service("b")])
    )
    two = run_pipeline(
        write_repo(tmp_path / "2", [base_service("b"), base_service("a", env=forward)])
    )
    assert one.configs == two.configs
    doc = yaml.safe_load(one.configs["general-purpose"])
    assert list(doc["services"][0]["env"]) == sorted(env)


def test_files_other_than_service_yaml_are_ignored(tmp_path: Path) -> None:
    repo = write_repo(tmp_path, [base_service("web")])
    (repo / "services" / "notes.txt").write_text("not: yaml: at all: [")
    (repo / "services" / "nested").mkdir()
    (repo / "services" / "nested" / "x.yaml").write_text("name: x")
    (repo / "README.md").write_text("# hi")
    (repo / "services" / "api.yml").write_text(yaml.safe_dump(base_service("api")))
    result = run_pipeline(repo)
    assert result.ok
    assert result.services == {"general-purpose": ["api", "web"]}


def test_empty_repository_gives_no_configs_and_no_errors(tmp_path: Path) -> None:
    result = run_pipeline(tmp_path)
    assert result.ok
    assert result.configs == {}


def test_enriched_output_validates_as_a_node_config(tmp_path: Path) -> None:
    from nodeagent.spec import validate_node_config

    result = run_pipeline(Path("examples/enricher-input"))
    for node_type, text in result.configs.items():
        config, errors, warnings = validate_node_config(yaml.safe_load(text), node_type)
        assert config is not None and not errors and not warnings
        assert config.node == node_type


def test_two_services_of_a_node_type_on_one_image_get_a_warning(
    tmp_path: Path,
) -> None:
    image = "/var/lib/images/shared.ext4"
    services = [
        base_service("web", image=image),
        base_service("api", image=image),
        base_service("batch", image=image, node_type="compute"),  # another node
    ]
    result = run_pipeline(write_repo(tmp_path, services))
    assert result.ok  # published: the agent starts api and refuses web
    assert [str(w) for w in result.warnings] == [
        f"services/web.yaml: service web: image {image} is already the root drive"
        " of service api: two VMs writing one image corrupt it, give each service"
        " an image of its own"
    ]
