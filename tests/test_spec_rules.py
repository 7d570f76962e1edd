"""Every validation rule of the service spec, one table row each.

Each row writes a one-service repository (plus a link target where needed), runs the
whole pipeline and expects an exact error naming the file, the service and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controlplane.enrichment import run_pipeline
from tests.specrepo import base_service, write_repo

WEB = "services/web.yaml: service web: "
DROP = object()  # marks a key to leave out of the spec

INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("missing image", {"image": DROP}, WEB + "missing image"),
    ("null image", {"image": None}, WEB + "image: must be a string (got None)"),
    ("name not a label", {"name": "Web_1"}, "is not a DNS label"),
    ("name too long", {"name": "a" * 64}, "is not a DNS label"),
    ("name leading dash", {"name": "-web"}, "is not a DNS label"),
    ("name not a string", {"name": 7}, "services/web.yaml: name: must be a string"),
    (
        "relative image",
        {"image": "images/web.ext4"},
        WEB + "image: must be an absolute path",
    ),
    (
        "dotdot image",
        {"image": "/var/../etc/shadow"},
        WEB + "image: must not contain '..'",
    ),
    (
        "relative kernel",
        {"kernel": "vmlinux"},
        WEB + "kernel: must be an absolute path",
    ),
    (
        "dotdot kernel",
        {"kernel": "/a/../vmlinux"},
        WEB + "kernel: must not contain '..'",
    ),
    (
        "relative initrd",
        {"initrd": "initrd.img"},
        WEB + "initrd: must be an absolute path",
    ),
    ("vcpus zero", {"vcpus": 0}, WEB + "vcpus: must be between 1 and 32, got 0"),
    ("vcpus 33", {"vcpus": 33}, WEB + "vcpus: must be between 1 and 32, got 33"),
    ("vcpus text", {"vcpus": "two"}, WEB + "vcpus: must be an integer (got 'two')"),
    ("vcpus float", {"vcpus": 1.5}, WEB + "vcpus: must be an integer (got 1.5)"),
    ("vcpus bool", {"vcpus": True}, WEB + "vcpus: must be an integer (got True)"),
    ("memory 127", {"memory_mb": 127}, WEB + "memory_mb: must be >= 128, got 127"),
    ("network text", {"network": "yes"}, WEB + "network: must be true or false"),
    (
        "kernel args control",
        {"kernel_args": "a\nb"},
        WEB + "kernel_args: must be printable ASCII",
    ),
    (
        "kernel args long",
        {"kernel_args": "x" * 2049},
        WEB + "kernel_args: is 2049 characters",
    ),
    (
        "health type",
        {"health_check": {"type": "udp", "port": 1}},
        WEB + "health_check.type: must be one of 'http' or 'tcp' (got 'udp')",
    ),
    (
        "health missing type",
        {"health_check": {"port": 80}},
        WEB + "missing health_check.type",
    ),
    (
        "health missing port",
        {"health_check": {"type": "tcp"}},
        WEB + "missing health_check.port",
    ),
    (
        "health port 0",
        {"health_check": {"type": "tcp", "port": 0}},
        WEB + "health_check.port: must be between 1 and 65535, got 0",
    ),
    (
        "health path relative",
        {"health_check": {"type": "http", "port": 80, "path": "health"}},
        WEB + "health_check.path: must start with '/'",
    ),
    (
        "tcp with own path",
        {"health_check": {"type": "tcp", "port": 80, "path": "/x"}},
        WEB + "health_check: path: only http health checks have a path",
    ),
    (
        "health check without network",
        {"network": False, "health_check": {"type": "tcp", "port": 80}},
        WEB + "health_check: the service has no network to probe",
    ),
    (
        "retries zero",
        {"health_check": {"type": "tcp", "port": 80, "retries": 0}},
        WEB + "health_check.retries: must be between 1 and 100, got 0",
    ),
    (
        "port forward 65536",
        {"port_forwards": [{"host_port": 65536, "vm_port": 80}]},
        WEB + "port_forwards[0].host_port: must be between 1 and 65535, got 65536",
    ),
    (
        "port forward missing vm_port",
        {"port_forwards": [{"host_port": 80}]},
        WEB + "missing port_forwards[0].vm_port",
    ),
    (
        "port forward without network",
        {"network": False, "port_forwards": [{"host_port": 80, "vm_port": 80}]},
        WEB + "port_forwards: the service has no network",
    ),
    ("port forwards not a list", {"port_forwards": 80}, WEB + "port_forwards: must be"),
    (
        "env key digit",
        {"env": {"1X": "a"}},
        WEB + "env.1X: '1X' is not a valid environment",
    ),
    ("env key dash", {"env": {"A-B": "a"}}, WEB + "env.A-B: 'A-B' is not a valid"),
    (
        "env value null",
        {"env": {"A": None}},
        WEB + "env.A: must be a string (got None)",
    ),
    ("env value nested", {"env": {"A": [1]}}, WEB + "env.A: must be a string"),
    ("env not a mapping", {"env": ["A=1"]}, WEB + "env: must be a mapping"),
    (
        "link target missing",
        {"links": [{"service": "db", "env": "DB_URL", "port": 5432}]},
        WEB + "links[0].service: no service db here",
    ),
    (
        "link bad env",
        {"links": [{"service": "api", "env": "db-url", "port": 1}]},
        WEB + "links[0].env: 'db-url' is not a valid environment variable name",
    ),
    (
        "link bad port",
        {"links": [{"service": "api", "env": "API", "port": 0}]},
        WEB + "links[0].port: must be between 1 and 65535, got 0",
    ),
    (
        "link bad protocol",
        {"links": [{"service": "api", "env": "API", "port": 1, "protocol": "h t"}]},
        WEB + "links[0].protocol: 'h t' is not a URL scheme",
    ),
    ("missing node type", {"node_type": DROP}, WEB + "missing node_type"),
    (
        "node type with slash",
        {"node_type": "../x"},
        WEB + "node_type: '../x' is not a DNS name",
    ),
    (
        "metadata nested",
        {"metadata": {"a": {"b": 1}}},
        WEB + "metadata.a: must be a string",
    ),
]

DURATIONS = ["", "10", "10x", "1.5s", "s", "-1s", "1s1m", "1m1m", "10 s", "0s", "0m0s"]


def enrich_one(tmp_path: Path, override: dict[str, Any]) -> list[str]:
    web = {
        k: v for k, v in {**base_service("web"), **override}.items() if v is not DROP
    }
    files = {"web.yaml": web, "api.yaml": base_service("api")}
    result = run_pipeline(write_repo(tmp_path, files))
    assert not result.configs, "a run with errors must produce no node configs"
    return [str(e) for e in result.errors]


@pytest.mark.parametrize(
    ("override", "expected"),
    [(o, e) for _, o, e in INVALID],
    ids=[i for i, _, _ in INVALID],
)
def test_invalid_field_is_reported_with_file_service_and_field(
    tmp_path: Path, override: dict[str, Any], expected: str
) -> None:
    errors = enrich_one(tmp_path, override)
    assert any(expected in e for e in errors), errors


@pytest.mark.parametrize("text", DURATIONS)
def test_bad_duration_is_an_error_never_zero(tmp_path: Path, text: str) -> None:
    hc = {"type": "tcp", "port": 80, "interval": text}
    errors = enrich_one(tmp_path, {"health_check": hc})
    assert any(e.startswith(WEB + "health_check.interval: ") for e in errors), errors


def test_every_error_of_every_file_is_collected(tmp_path: Path) -> None:
    files = {
        "web.yaml": base_service("web", vcpus=0, memory_mb=1, image="rel"),
        "api.yaml": base_service("api", kernel="k", env={"1": "x"}),
    }
    result = run_pipeline(write_repo(tmp_path, files))
    assert [str(e) for e in result.errors] == [
        "services/api.yaml: service api: kernel: must be an absolute path, got 'k'",
        "services/api.yaml: service api: env.1: '1' is not a valid environment "
        "variable name ([A-Za-z_][A-Za-z0-9_]*)",
        "services/web.yaml: service web: image: must be an absolute path, got 'rel'",
        "services/web.yaml: service web: vcpus: must be between 1 and 32, got 0",
        "services/web.yaml: service web: memory_mb: must be >= 128, got 1",
    ]


def test_missing_required_fields_are_named(tmp_path: Path) -> None:
    result = run_pipeline(write_repo(tmp_path, {"web.yaml": {"name": "web"}}))
    assert [str(e) for e in result.errors] == [
        "services/web.yaml: service web: missing image",
        "services/web.yaml: service web: missing node_type",
    ]


def test_duplicate_names_across_files(tmp_path: Path) -> None:
    files = {"a.yaml": base_service("web"), "b.yaml": base_service("web")}
    result = run_pipeline(write_repo(tmp_path, files))
    assert [str(e) for e in result.errors] == [
        "services/b.yaml: service web: duplicate name (also in services/a.yaml)"
    ]


def test_two_services_forwarding_one_host_port(tmp_path: Path) -> None:
    pf = [{"host_port": 80, "vm_port": 8080}]
    files = [
        base_service("api", port_forwards=pf),
        base_service("web", port_forwards=pf),
    ]
    result = run_pipeline(write_repo(tmp_path, files))
    assert [str(e) for e in result.errors] == [
        "services/web.yaml: service web: port_forwards.host_port: 80 is also used "
        "by service api"
    ]


def test_same_host_port_on_different_node_types_is_fine(tmp_path: Path) -> None:
    pf = [{"host_port": 80, "vm_port": 8080}]
    files = [
        base_service("api", port_forwards=pf),
        base_service("web", port_forwards=pf, node_type="edge"),
    ]
    assert run_pipeline(write_repo(tmp_path, files)).ok


def test_link_target_must_be_in_the_same_node_type(tmp_path: Path) -> None:
    link = [{"service": "db", "env": "DB", "port": 5432}]
    files = [base_service("web", links=link), base_service("db", node_type="storage")]
    errors = [str(e) for e in run_pipeline(write_repo(tmp_path, files)).errors]
    assert errors == [
        "services/web.yaml: service web: links[0].service: no service db here"
    ]


def test_link_target_must_have_a_network(tmp_path: Path) -> None:
    link = [{"service": "db", "env": "DB", "port": 5432}]
    files = [base_service("web", links=link), base_service("db", network=False)]
    errors = [str(e) for e in run_pipeline(write_repo(tmp_path, files)).errors]
    assert errors == [
        "services/web.yaml: service web: links[0].service: db has no network"
    ]


def test_link_to_an_invalid_service_is_not_reported_twice(tmp_path: Path) -> None:
    link = [{"service": "db", "env": "DB", "port": 5432}]
    files = [base_service("web", links=link), base_service("db", vcpus=0)]
    errors = [str(e) for e in run_pipeline(write_repo(tmp_path, files)).errors]
    assert errors == [
        "services/db.yaml: service db: vcpus: must be between 1 and 32, got 0"
    ]


def test_health_check_type_may_come_from_defaults(tmp_path: Path) -> None:
    defaults = {"health_check": {"type": "http", "path": "/health"}}
    files = [base_service("web", health_check={"port": 8080})]
    assert run_pipeline(write_repo(tmp_path, files, defaults)).ok


@pytest.mark.parametrize(
    ("defaults", "expected"),
    [
        ({"vcpus": 99}, "defaults.yaml: vcpus: must be between 1 and 32, got 99"),
        ({"kernel": "vmlinux"}, "defaults.yaml: kernel: must be an absolute path"),
        (
            {"health_check": {"interval": "soon"}},
            "defaults.yaml: health_check.interval: ",
        ),
        ({"env": {"9": "x"}}, "defaults.yaml: env.9: '9' is not a valid environment"),
    ],
)
def test_invalid_defaults_are_reported_against_defaults_yaml(
    tmp_path: Path, defaults: dict[str, Any], expected: str
) -> None:
    result = run_pipeline(write_repo(tmp_path, [base_service("web")], defaults))
    assert any(str(e).startswith(expected) for e in result.errors), result.errors


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("name: [web\n", "services/web.yaml: invalid YAML (line 2, column 1)"),
        ("- a\n- b\n", "services/web.yaml: must be a mapping"),
        ("", "services/web.yaml: must be a mapping"),
        ("a: 1\n---\nb: 2\n", "services/web.yaml: invalid YAML"),
        ("\t- x: [", "services/web.yaml: invalid YAML"),
    ],
)
def test_unparsable_files_are_errors_naming_the_file(
    tmp_path: Path, content: str, expected: str
) -> None:
    write_repo(tmp_path, [])
    (tmp_path / "services" / "web.yaml").write_text(content)
    errors = [str(e) for e in run_pipeline(tmp_path).errors]
    assert any(e.startswith(expected) for e in errors), errors


def test_symlink_out_of_the_repository_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.yaml"
    secret.write_text("name: web\nimage: /etc/passwd\nnode_type: x\n")
    repo = write_repo(tmp_path / "repo", [])
    (repo / "services" / "web.yaml").symlink_to(secret)
    errors = [str(e) for e in run_pipeline(repo).errors]
    assert errors == ["services/web.yaml: file links outside the repository"]


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    write_repo(tmp_path, [])
    (tmp_path / "services" / "web.yaml").write_text("# pad\n" * 200_000)
    errors = [str(e) for e in run_pipeline(tmp_path).errors]
    assert errors == ["services/web.yaml: file is larger than 1048576 bytes"]


@pytest.mark.parametrize(
    ("spec", "warning"),
    [
        (
            {"source_image": "nginx"},
            "services/web.yaml: service web: unknown field source_image ignored",
        ),
        ({"vpcus": 2}, "services/web.yaml: service web: unknown field vpcus ignored"),
        (
            {"health_check": {"type": "tcp", "port": 1, "intervall": "5s"}},
            "services/web.yaml: service web: unknown field health_check.intervall ignored",
        ),
        (
            {"port_forwards": [{"host_port": 1, "vm_port": 2, "proto": "udp"}]},
            "services/web.yaml: service web: unknown field port_forwards[0].proto ignored",
        ),
    ],
)
def test_unknown_fields_are_warned_about_and_left_out(
    tmp_path: Path, spec: dict[str, Any], warning: str
) -> None:
    result = run_pipeline(write_repo(tmp_path, [base_service("web", **spec)]))
    assert result.ok, result.errors
    assert warning in [str(w) for w in result.warnings]
    text = result.configs["general-purpose"]
    for key in ("source_image", "vpcus", "intervall", "proto"):
        assert key not in text


def test_errors_found_only_after_the_merge_come_in_the_same_run(tmp_path: Path) -> None:
    spec = base_service("web", vcpus=0, image="rel", health_check={"port": 80})
    result = run_pipeline(write_repo(tmp_path, [spec]))
    assert [str(e) for e in result.errors] == [
        "services/web.yaml: service web: image: must be an absolute path, got 'rel'",
        "services/web.yaml: service web: vcpus: must be between 1 and 32, got 0",
        "services/web.yaml: service web: missing health_check.type",
    ]
