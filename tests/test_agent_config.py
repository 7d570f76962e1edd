"""The agent configuration: the original's keys and defaults, errors naming keys."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nodeagent.config import AgentConfigError, load_agent_config, parse_agent_config

EXAMPLES = Path(__file__).parent.parent / "examples"
GIT = {"store_url": "https://git.example.com/ops.git"}


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(AgentConfigError) as caught:
        parse_agent_config(data)
    return [str(p) for p in caught.value.problems]


@pytest.mark.parametrize(
    ("key", "default"),
    [
        ("store_type", "git"),
        ("store_branch", "main"),
        ("s3_prefix", ""),
        ("images_dir", "/var/lib/images"),
        ("poll_interval", "30s"),
        ("firecracker_bin", "/usr/bin/firecracker"),
        ("state_dir", "/var/lib/firework"),
        ("log_level", "info"),
        ("api_listen_addr", ""),
        ("enable_health_checks", True),
        ("enable_network_setup", True),
        ("vm_subnet", "172.16.0.0/24"),
        ("vm_gateway", "172.16.0.1"),
        ("vm_bridge", "br-firework"),
        ("out_interface", None),
    ],
)
def test_defaults_of_the_original(key: str, default: Any) -> None:
    config, warnings = parse_agent_config(GIT)
    assert getattr(config, key) == default
    assert warnings == []


def test_node_name_defaults_to_the_host_name() -> None:
    import socket

    config, _ = parse_agent_config(GIT)
    assert config.node_name == socket.gethostname().split(".")[0].lower()
    assert config.labels == (config.node_name,)


def test_node_names_override_node_name() -> None:
    config, _ = parse_agent_config(
        {**GIT, "node_name": "a", "node_names": ["web", "db"]}
    )
    assert config.labels == ("web", "db")
    assert config.poll_seconds == 30


@pytest.mark.parametrize("name", ["agent-s3.yaml", "agent-git.yaml"])
def test_examples_are_valid(name: str) -> None:
    config, warnings = load_agent_config(EXAMPLES / name)
    assert warnings == []
    assert config.store_type in ("s3", "git")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, "agent.yaml: store_url: required when store_type is git"),
        ({"store_type": "s3"}, "agent.yaml: s3_bucket: required when store_type is s3"),
        (
            {"store_type": "local"},
            "agent.yaml: store_dir: required when store_type is local",
        ),
        (
            {**GIT, "store_type": "ftp"},
            "agent.yaml: store_type: must be one of 'git', 's3' or 'local'",
        ),
        (
            {**GIT, "poll_interval": "30"},
            "agent.yaml: poll_interval: '30' is not a duration",
        ),
        (
            {**GIT, "poll_interval": "0s"},
            "agent.yaml: poll_interval: must be longer than zero",
        ),
        (
            {**GIT, "state_dir": "var/fw"},
            "agent.yaml: state_dir: must be an absolute path",
        ),
        (
            {**GIT, "firecracker_bin": "/usr/../bin/fc"},
            "agent.yaml: firecracker_bin: must not contain '..'",
        ),
        ({**GIT, "log_level": "trace"}, "agent.yaml: log_level: must be one of"),
        (
            {**GIT, "api_listen_addr": "8080"},
            "agent.yaml: api_listen_addr: '8080' is not an address",
        ),
        (
            {**GIT, "vm_subnet": "172.16.0.1/24"},
            "agent.yaml: vm_subnet: '172.16.0.1/24' is not an IPv4 subnet",
        ),
        (
            {**GIT, "vm_gateway": "172.16.0.1/24"},
            "agent.yaml: vm_gateway: '172.16.0.1/24' is not an IPv4 address (no prefix)",
        ),
        (
            {**GIT, "vm_gateway": "10.0.0.1"},
            "agent.yaml: vm_gateway: 10.0.0.1 is not a host address of 172.16.0.0/24",
        ),
        (
            {**GIT, "vm_gateway": "172.16.0.0"},
            "agent.yaml: vm_gateway: 172.16.0.0 is not a host address",
        ),
        (
            {**GIT, "vm_bridge": "a-bridge-name-too-long"},
            "agent.yaml: vm_bridge: 'a-bridge-name-too-long' is not a valid interface name",
        ),
        (
            {**GIT, "s3_prefix": "prod"},
            "agent.yaml: s3_prefix: 'prod' must be empty or like prod/",
        ),
        (
            {**GIT, "node_name": "Node_1"},
            "agent.yaml: node_name: 'Node_1' is not a DNS name",
        ),
        (
            {**GIT, "enable_health_checks": "yes"},
            "agent.yaml: enable_health_checks: must be true or false",
        ),
        (
            {**GIT, "s3_access_key_file": "/k"},
            "agent.yaml: s3_access_key_file and s3_secret_key_file: set both or neither",
        ),
        (
            {**GIT, "control_plane_url": "ftp://cp"},
            "agent.yaml: control_plane_url: 'ftp://cp' is not an http(s) URL",
        ),
        ({**GIT, "action_parallelism": 0}, "agent.yaml: action_parallelism: "),
    ],
)
def test_invalid_keys_are_named(data: dict[str, Any], expected: str) -> None:
    found = problems(data)
    assert any(p.startswith(expected) for p in found), found


def test_unknown_keys_are_warnings() -> None:
    _, warnings = parse_agent_config({**GIT, "poll_intervall": "5s"})
    assert [str(w) for w in warnings] == [
        "agent.yaml: unknown key poll_intervall ignored"
    ]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("a: [b\n", "invalid YAML (line 2, column 1)"),
        ("- a\n", "must be a mapping of keys"),
    ],
)
def test_unparsable_files(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(content)
    with pytest.raises(AgentConfigError) as caught:
        load_agent_config(path)
    (problem,) = caught.value.problems
    assert str(problem).startswith(f"{path}: {expected}")


def test_check_config_command(tmp_path: Path) -> None:
    agent = Path(sys.executable).with_name("firework-agent")
    good = subprocess.run(
        [str(agent), "check-config", "--config", str(EXAMPLES / "agent-s3.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert good.returncode == 0, good.stderr
    assert "node types general-purpose from the s3 store every 30s" in good.stdout
    bad = tmp_path / "agent.yaml"
    bad.write_text("store_type: s3\npoll_interval: soon\n")
    done = subprocess.run(
        [str(agent), "check-config", "--config", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert f"error: {bad}: poll_interval: 'soon' is not a duration" in done.stderr


def test_store_requirement_is_reported_with_field_errors() -> None:
    assert problems({"store_type": "s3", "poll_interval": "soon"}) == [
        "agent.yaml: poll_interval: 'soon' is not a duration like 10s, 1m30s or 500ms",
        "agent.yaml: s3_bucket: required when store_type is s3",
    ]


def test_local_example_is_valid_once_its_root_is_filled_in(tmp_path: Path) -> None:
    text = (EXAMPLES / "agent-local.yaml").read_text()
    assert "@ROOT@" in text
    path = tmp_path / "agent.yaml"
    path.write_text(text.replace("@ROOT@", str(tmp_path)))
    config, warnings = load_agent_config(path)
    assert warnings == []
    assert config.store_type == "local"
    assert config.store_dir == f"{tmp_path}/var/objectstore"
