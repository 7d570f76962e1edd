"""Hand-written node configs go through the same model and give the same errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from nodeagent.spec import validate_node_config

FILE = "nodes/node-1.yaml"


def service(name: str = "web", **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": name,
        "image": f"/img/{name}.ext4",
        "kernel": "/img/vmlinux",
        "vcpus": 1,
        "memory_mb": 256,
        "kernel_args": "console=ttyS0",
        "network": True,
    }
    return {**base, **fields}


def errors_of(*services: dict[str, Any], node: Any = "node-1") -> list[str]:
    config, errors, _ = validate_node_config(
        {"node": node, "services": list(services)}, FILE
    )
    assert (config is None) == bool(errors)
    return [str(e) for e in errors]


def test_example_node_config_is_valid() -> None:
    data = yaml.safe_load(Path("examples/nodes/node-1.yaml").read_text())
    config, errors, warnings = validate_node_config(data, FILE)
    assert not errors and not warnings
    assert config is not None
    web, cache = config.services
    assert web.network is not None and web.network.guest_mac == "AA:FC:00:00:00:01"
    assert cache.network is not None and cache.network.interface == "fw-cache"
    assert cache.health_check is not None and cache.health_check.interval == "10s"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"kernel": "vmlinux"}, "kernel: must be an absolute path, got 'vmlinux'"),
        ({"vcpus": 40}, "vcpus: must be between 1 and 32, got 40"),
        ({"memory_mb": 64}, "memory_mb: must be >= 128, got 64"),
        (
            {"network": {"interface": "a-very-long-tap-name"}},
            "network.interface: 'a-very-long-tap-name' is not a valid interface name",
        ),
        (
            {"network": {"interface": "tap;rm -rf"}},
            "network.interface: 'tap;rm -rf' is not a valid",
        ),
        (
            {"network": {"interface": "t", "guest_mac": "zz"}},
            "network.guest_mac: 'zz' is not a MAC address",
        ),
        (
            {"network": {"interface": "t", "guest_mac": "01:00:00:00:00:01"}},
            "network.guest_mac: '01:00:00:00:00:01' is a multicast MAC address",
        ),
        (
            {"network": {"interface": "t", "guest_ip": "300.1.1.1"}},
            "network.guest_ip: '300.1.1.1' is not an IPv4 address",
        ),
        (
            {"health_check": {"type": "http", "port": 80, "timeout": "5"}},
            "health_check.timeout: '5' is not a duration",
        ),
    ],
)
def test_invalid_hand_written_fields(fields: dict[str, Any], expected: str) -> None:
    assert f"{FILE}: service web: {expected}" in "\n".join(errors_of(service(**fields)))


def test_missing_fields_are_named_each() -> None:
    assert errors_of({"name": "web", "image": "/i"}) == [
        f"{FILE}: service web: missing kernel",
        f"{FILE}: service web: missing vcpus",
        f"{FILE}: service web: missing memory_mb",
        f"{FILE}: service web: missing kernel_args",
    ]


def test_service_without_a_name_is_named_by_position() -> None:
    assert f"{FILE}: service #1: missing name" in errors_of(
        service("a"), {"image": "/i"}
    )


def test_duplicate_names_devices_macs_and_ips_are_errors() -> None:
    net = {
        "interface": "tap0",
        "guest_mac": "AA:FC:00:00:00:01",
        "guest_ip": "10.0.0.2",
    }
    errors = errors_of(
        service("a", network=net), service("b", network=net), service("a")
    )
    assert errors == [
        f"{FILE}: service a: duplicate name (also services[0])",
        f"{FILE}: service b: network.interface: tap0 is also used by service a",
        f"{FILE}: service b: network.guest_mac: AA:FC:00:00:00:01 is also used by service a",
        f"{FILE}: service b: network.guest_ip: 10.0.0.2 is also used by service a",
    ]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ([], f"{FILE}: must be a mapping with node and services"),
        (
            {"node": "Node 1", "services": []},
            f"{FILE}: node: 'Node 1' is not a DNS name",
        ),
        ({"node": "n", "services": {"a": 1}}, f"{FILE}: services: must be a list"),
        ({"services": []}, f"{FILE}: missing node"),
    ],
)
def test_invalid_document_shapes(data: Any, expected: str) -> None:
    _, errors, _ = validate_node_config(data, FILE)
    assert any(str(e).startswith(expected) for e in errors), errors


def test_unknown_fields_warn_and_are_dropped() -> None:
    data = {"node": "n", "owner": "x", "services": [service(colour="red")]}
    config, errors, warnings = validate_node_config(data, FILE)
    assert not errors and config is not None
    assert [str(w) for w in warnings] == [
        f"{FILE}: unknown field owner ignored",
        f"{FILE}: service web: unknown field colour ignored",
    ]
    assert "colour" not in config.services[0].model_dump()


def test_link_rules_apply_to_hand_written_configs() -> None:
    link = [{"service": "db", "env": "DB", "port": 1}]
    assert errors_of(service(links=link)) == [
        f"{FILE}: service web: links[0].service: no service db here"
    ]


def test_link_to_an_invalid_service_is_reported_once() -> None:
    link = [{"service": "db", "env": "DB", "port": 1}]
    assert errors_of(service(links=link), service("db", vcpus=0)) == [
        f"{FILE}: service db: vcpus: must be between 1 and 32, got 0"
    ]
