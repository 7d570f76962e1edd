"""The node config: the one contract between the control plane and the agent.

``nodes/<node-type>.yaml`` is written by the enricher and read by the agent; in Git
store mode people write it by hand. Both go through :func:`validate_node_config`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from nodeagent.naming import tap_name
from nodeagent.spec.fields import (
    AbsPath,
    Duration,
    EnvKey,
    HttpPath,
    Interface,
    IPv4,
    KernelArgs,
    Mac,
    MemoryMb,
    NodeName,
    Port,
    Retries,
    ScalarText,
    Scheme,
    ServiceName,
    VCpus,
)
from nodeagent.spec.problems import Problem, problems_from, unknown_fields

# Fallbacks of the original enricher; health-check timing per DESIGN.md.
FALLBACK_KERNEL = "/var/lib/images/vmlinux-5.10"
FALLBACK_VCPUS = 1
FALLBACK_MEMORY_MB = 256
FALLBACK_KERNEL_ARGS = "console=ttyS0 reboot=k panic=1 pci=off init=/sbin/fc-init"
FALLBACK_INTERVAL = "10s"
FALLBACK_TIMEOUT = "5s"
FALLBACK_RETRIES = 3
FALLBACK_HTTP_PATH = "/"


class Model(BaseModel):
    """Base of the contract: frozen, unknown keys ignored (reported as warnings)."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class PortForward(Model):
    """Forward ``host_port`` on the node to ``vm_port`` on the guest."""

    host_port: Port
    vm_port: Port


class Link(Model):
    """Expose another service's URL to this one in the env var ``env``."""

    service: ServiceName
    env: EnvKey
    port: Port
    protocol: Scheme = "http"


class HealthCheck(Model):
    """How the agent probes a service on its guest IP."""

    type: Literal["http", "tcp"]
    port: Port
    path: HttpPath | None = None
    interval: Duration = FALLBACK_INTERVAL
    timeout: Duration = FALLBACK_TIMEOUT
    retries: Retries = FALLBACK_RETRIES

    @model_validator(mode="before")
    @classmethod
    def _path_for_http(cls, data: Any) -> Any:
        if (
            isinstance(data, Mapping)
            and data.get("type") == "http"
            and data.get("path") is None
        ):
            return {**data, "path": FALLBACK_HTTP_PATH}
        return data

    @model_validator(mode="after")
    def _no_path_for_tcp(self) -> HealthCheck:
        if self.type == "tcp" and self.path is not None:
            raise ValueError("path: only http health checks have a path")
        return self


class Network(Model):
    """The guest's network: its TAP device and, when pinned, its MAC and IP."""

    interface: Interface
    guest_mac: Mac | None = None
    guest_ip: IPv4 | None = None


class ServiceConfig(Model):
    """One fully resolved service of a node config."""

    name: ServiceName
    image: AbsPath
    kernel: AbsPath
    initrd: AbsPath | None = None
    vcpus: VCpus
    memory_mb: MemoryMb
    kernel_args: KernelArgs
    network: Network | None = None
    port_forwards: tuple[PortForward, ...] = ()
    env: dict[EnvKey, ScalarText] = Field(default_factory=dict)
    links: tuple[Link, ...] = ()
    health_check: HealthCheck | None = None
    metadata: dict[ScalarText, ScalarText] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _network_shorthand(cls, data: Any) -> Any:
        """``network: true`` means a network on the service's own TAP device."""
        if not isinstance(data, Mapping) or "network" not in data:
            return data
        net, name = data["network"], data.get("name")
        if net is True and isinstance(name, str):
            return {**data, "network": {"interface": tap_name(name)}}
        if net is False or net is None:
            return {k: v for k, v in data.items() if k != "network"}
        if (
            isinstance(net, Mapping)
            and "interface" not in net
            and isinstance(name, str)
        ):
            return {**data, "network": {**net, "interface": tap_name(name)}}
        return data

    @model_validator(mode="after")
    def _needs_network(self) -> ServiceConfig:
        if self.network is None and self.port_forwards:
            raise ValueError("port_forwards: the service has no network")
        if self.network is None and self.health_check is not None:
            raise ValueError("health_check: the service has no network to probe")
        return self


class NodeConfig(Model):
    """``nodes/<node-type>.yaml``: the services one node (type) must run."""

    node: NodeName
    services: tuple[ServiceConfig, ...] = ()


def check_services(
    services: Iterable[ServiceConfig],
    file_of: Mapping[str, str] | None = None,
    broken: Collection[str] = (),
) -> list[Problem]:
    """Rules across the services of one node: links, host ports, devices.

    Links to ``broken`` services (invalid, already reported) are not reported again.
    """
    services = list(services)
    where = file_of or {}
    by_name = {s.name: s for s in services}
    problems: list[Problem] = []

    def add(service: ServiceConfig, message: str) -> None:
        problems.append(Problem(where.get(service.name, ""), service.name, message))

    for service in services:
        for i, link in enumerate(service.links):
            target = by_name.get(link.service)
            if target is None and link.service in broken:
                continue
            if target is None:
                add(service, f"links[{i}].service: no service {link.service} here")
            elif target.network is None:
                add(service, f"links[{i}].service: {link.service} has no network")
    for field, values in _claims(services).items():
        for value, owners in values.items():
            for owner in owners[1:]:
                add(owner, f"{field}: {value} is also used by service {owners[0].name}")
    return problems


def _claims(
    services: list[ServiceConfig],
) -> dict[str, dict[Any, list[ServiceConfig]]]:
    """Who claims each host port, TAP device, MAC and IP, in service order."""
    claims: dict[str, dict[Any, list[ServiceConfig]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for service in services:
        for port in sorted({pf.host_port for pf in service.port_forwards}):
            claims["port_forwards.host_port"][port].append(service)
        net = service.network
        if net is None:
            continue
        claims["network.interface"][net.interface].append(service)
        if net.guest_mac:
            claims["network.guest_mac"][net.guest_mac].append(service)
        if net.guest_ip:
            claims["network.guest_ip"][net.guest_ip].append(service)
    return claims


def validate_node_config(
    data: Any, file: str = ""
) -> tuple[NodeConfig | None, list[Problem], list[Problem]]:
    """Validate a parsed node config; returns (config or None, errors, warnings)."""
    if not isinstance(data, Mapping):
        return None, [Problem(file, "", "must be a mapping with node and services")], []
    warnings = [
        Problem(file, "", f"unknown field {path} ignored")
        for path in unknown_fields(
            NodeConfig, {k: v for k, v in data.items() if k != "services"}
        )
    ]
    errors: list[Problem] = []
    node = data.get("node")
    services_raw = data.get("services") or []
    if not isinstance(services_raw, list):
        errors.append(Problem(file, "", "services: must be a list"))
        services_raw = []
    try:
        NodeConfig.model_validate({k: v for k, v in data.items() if k == "node"})
    except ValidationError as exc:
        errors.extend(problems_from(exc, file, ""))
    services: list[ServiceConfig] = []
    seen: dict[str, int] = {}
    broken: set[str] = set()
    for i, raw in enumerate(services_raw):
        label = _label(raw, i)
        warnings.extend(
            Problem(file, label, f"unknown field {path} ignored")
            for path in unknown_fields(ServiceConfig, raw)
        )
        try:
            service = ServiceConfig.model_validate(raw)
        except ValidationError as exc:
            errors.extend(problems_from(exc, file, label))
            broken.add(label)
            continue
        if service.name in seen:
            errors.append(
                Problem(
                    file, label, f"duplicate name (also services[{seen[service.name]}])"
                )
            )
            continue
        seen[service.name] = i
        services.append(service)
    errors.extend(check_services(services, dict.fromkeys(seen, file), broken))
    if errors:
        return None, errors, warnings
    return NodeConfig(node=node, services=tuple(services)), [], warnings


def _label(raw: Any, index: int) -> str:
    """How to name a service in messages, even when its name is broken."""
    name = raw.get("name") if isinstance(raw, Mapping) else None
    return name if isinstance(name, str) and name else f"#{index}"
