"""The agent configuration (``/etc/firework/agent.yaml``), validated at start.

Every key of the Go original keeps its name and default; keys added here are
marked in ``docs/agent.md``. Errors name the file and the key; unknown keys are
ignored with a warning so typos are seen.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    Field,
    StrictBool,
    ValidationError,
    model_validator,
)

from nodeagent.durations import parse_duration
from nodeagent.spec.fields import AbsPath, Duration, Interface, NodeName, StrictStr
from nodeagent.spec.node import Model
from nodeagent.spec.problems import Problem, problems_from, unknown_fields, yaml_error

MAX_CONFIG_BYTES = 1 << 20


def _listen_addr(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if value and (not sep or not port.isdigit() or not 0 < int(port) < 65536):
        raise ValueError(f"{value!r} is not an address like 127.0.0.1:8080 or :8080")
    if host.startswith("[") != host.endswith("]"):
        raise ValueError(f"{value!r} has an unbalanced IPv6 bracket")
    return value


def _subnet(value: str) -> str:
    try:
        return str(ipaddress.IPv4Network(value, strict=True))
    except ValueError as exc:
        message = f"{value!r} is not an IPv4 subnet like 172.16.0.0/24: {exc}"
        raise ValueError(message) from None


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")) or any(c.isspace() for c in value):
        raise ValueError(f"{value!r} is not an http(s) URL")
    return value.rstrip("/")


def _prefix(value: str) -> str:
    if value and (not value.endswith("/") or value.startswith("/") or ".." in value):
        raise ValueError(f"{value!r} must be empty or like prod/ (ending in /)")
    return value


_STORE_KEYS = {"git": "store_url", "s3": "s3_bucket", "local": "store_dir"}


def _missing_store_key(store_type: object, values: Mapping[str, Any]) -> list[str]:
    """The key that ``store_type`` needs, if ``values`` leave it unset."""
    key = _STORE_KEYS.get(str(store_type))
    if key is None or values.get(key):
        return []
    return [f"{key}: required when store_type is {store_type}"]


def _default_node_name() -> str:
    return socket.gethostname().split(".")[0].lower()


ListenAddr = Annotated[StrictStr, AfterValidator(_listen_addr)]
Subnet = Annotated[StrictStr, AfterValidator(_subnet)]
HttpUrl = Annotated[StrictStr, AfterValidator(_http_url)]
S3Prefix = Annotated[StrictStr, AfterValidator(_prefix)]


class AgentConfig(Model):
    """What one node agent does and where it finds its node config."""

    # -- the original's keys, same names and defaults
    node_name: NodeName = Field(default_factory=_default_node_name)
    node_names: tuple[NodeName, ...] = ()
    store_type: Literal["git", "s3", "local"] = "git"
    store_url: StrictStr = ""
    store_branch: StrictStr = "main"
    s3_bucket: StrictStr = ""
    s3_prefix: S3Prefix = ""
    s3_region: StrictStr = ""
    s3_endpoint_url: StrictStr = ""
    s3_images_bucket: StrictStr = ""
    images_dir: AbsPath = "/var/lib/images"
    poll_interval: Duration = "30s"
    firecracker_bin: AbsPath = "/usr/bin/firecracker"
    state_dir: AbsPath = "/var/lib/firework"
    log_level: Literal["debug", "info", "warn", "error"] = "info"
    api_listen_addr: ListenAddr = ""
    enable_health_checks: StrictBool = True
    enable_network_setup: StrictBool = True
    vm_subnet: Subnet = "172.16.0.0/24"
    vm_gateway: StrictStr = "172.16.0.1"
    vm_bridge: Interface = "br-firework"
    out_interface: Interface | None = None
    # -- added by Firework: guest isolation
    vm_isolation: Literal["none", "links"] = "none"
    vm_block_metadata: StrictBool = True
    # -- added by Firework
    store_dir: AbsPath | None = None  # store_type local: <store_dir>/nodes/*.yaml
    store_token_file: AbsPath | None = None  # Git token, read when needed
    s3_access_key_file: AbsPath | None = None
    s3_secret_key_file: AbsPath | None = None
    jailer_bin: AbsPath | None = None
    jailer_uid: Annotated[int, Field(ge=1, le=2**31)] = 10000
    jailer_gid: Annotated[int, Field(ge=1, le=2**31)] = 10000
    jailer_chroot_base: AbsPath = "/srv/jailer"
    vm_start_timeout: Duration = "10s"
    vm_stop_timeout: Duration = "10s"
    action_parallelism: Annotated[int, Field(ge=1, le=64)] = 4
    control_plane_url: HttpUrl | None = None
    control_plane_token_file: AbsPath | None = None
    # one-time token an operator created; exchanged for the node token at start
    control_plane_enrollment_token_file: AbsPath | None = None
    heartbeat_interval: Duration = "30s"
    # -- added by Firework: health checks, restarts, image sync
    health_grace: Duration = "10s"  # after a VM starts, before its first probe
    restart_backoff_initial: Duration = "1s"
    restart_backoff_max: Duration = "5m"
    crashloop_restarts: Annotated[int, Field(ge=2, le=100)] = 5
    crashloop_window: Duration = "10m"
    image_sync_parallelism: Annotated[int, Field(ge=1, le=32)] = 4

    @model_validator(mode="after")
    def _consistent(self) -> AgentConfig:
        problems = [
            *self._store_problems(),
            *self._network_problems(),
            *self._secret_pair_problems(),
        ]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _store_problems(self) -> list[str]:
        values = {key: getattr(self, key) for key in _STORE_KEYS.values()}
        return _missing_store_key(self.store_type, values)

    def _network_problems(self) -> list[str]:
        subnet = ipaddress.IPv4Network(self.vm_subnet)
        try:
            gateway = ipaddress.IPv4Address(self.vm_gateway)
        except ValueError:
            return [
                f"vm_gateway: {self.vm_gateway!r} is not an IPv4 address (no prefix)"
            ]
        if gateway not in subnet or gateway in (
            subnet.network_address,
            subnet.broadcast_address,
        ):
            return [f"vm_gateway: {gateway} is not a host address of {subnet}"]
        return []

    def _secret_pair_problems(self) -> list[str]:
        if (self.s3_access_key_file is None) != (self.s3_secret_key_file is None):
            return ["s3_access_key_file and s3_secret_key_file: set both or neither"]
        return []

    @property
    def labels(self) -> tuple[str, ...]:
        """The node types this agent runs: ``node_names``, else ``node_name``."""
        return self.node_names or (self.node_name,)

    @property
    def poll_seconds(self) -> float:
        return parse_duration(self.poll_interval)

    @property
    def vms_dir(self) -> Path:
        return Path(self.state_dir) / "vms"


class AgentConfigError(Exception):
    """The agent configuration is unusable; ``problems`` say why, key by key."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def parse_agent_config(
    data: Any, file: str = "agent.yaml"
) -> tuple[AgentConfig, list[Problem]]:
    """Validate parsed YAML; returns the config and warnings, or raises."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise AgentConfigError([Problem(file, "", "must be a mapping of keys")])
    warnings = [
        Problem(file, "", f"unknown key {path} ignored")
        for path in unknown_fields(AgentConfig, data)
    ]
    try:
        return AgentConfig.model_validate(data), warnings
    except ValidationError as exc:
        problems = _split(problems_from(exc, file, ""))
    # field errors stop pydantic before the checks across keys: run the store one
    # on the raw data, so a missing store setting shows up in the same report
    for message in _missing_store_key(data.get("store_type", "git"), data):
        problems.append(Problem(file, "", message))
    raise AgentConfigError(list(dict.fromkeys(problems)))


def _split(problems: list[Problem]) -> list[Problem]:
    """One problem per key, also for the cross-key checks joined by ``; ``."""
    return [
        Problem(p.file, p.service, part)
        for p in problems
        for part in p.message.split("; ")
    ]


def load_agent_config(path: Path) -> tuple[AgentConfig, list[Problem]]:
    """Read and validate the agent configuration file at ``path``."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise AgentConfigError(
            [Problem(str(path), "", f"cannot read: {reason}")]
        ) from None
    if len(raw) > MAX_CONFIG_BYTES:
        message = f"larger than {MAX_CONFIG_BYTES} bytes"
        raise AgentConfigError([Problem(str(path), "", message)])
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise AgentConfigError([Problem(str(path), "", yaml_error(exc))]) from None
    return parse_agent_config(data, str(path))
