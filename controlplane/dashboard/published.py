"""The node configs the object store serves to agents, as the dashboard shows them.

Read and checked by :mod:`controlplane.publishedconfigs`: a config that agents
would reject is flagged, and its content names the revision that published it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from controlplane.models import Revision
from controlplane.objectstore import ObjectStore
from controlplane.publishedconfigs import (
    StoredConfig,
    list_stored,
    publishing_revisions,
)
from nodeagent.spec import HealthCheck, NodeConfig, ServiceConfig


@dataclass(frozen=True)
class ServiceRow:
    """One service of a published node config, as the dashboard lists it."""

    name: str
    vcpus: int
    memory_mb: int
    interface: str  # the TAP device, "" for a service without network
    guest_ip: str = ""
    health_check: str = ""
    links: list[str] = field(default_factory=list)
    port_forwards: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PublishedNode:
    """A node config as found in the object store, with what its validation said."""

    key: str
    node_type: str
    etag: str
    text: str
    sha256: str = ""
    services: list[ServiceRow] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    published_by: Revision | None = None


def published_node(stored: StoredConfig) -> PublishedNode:
    """The dashboard's view of one stored node config."""
    return PublishedNode(
        key=stored.key,
        node_type=stored.node_type,
        etag=stored.etag,
        text=stored.text,
        sha256=stored.sha256,
        services=_service_rows(stored.config) if stored.config else [],
        errors=list(stored.errors),
        warnings=list(stored.warnings),
    )


def health_check_text(check: HealthCheck | None) -> str:
    """``http :8080/healthz every 10s, timeout 5s, 3 retries``; ``""`` for none."""
    if check is None:
        return ""
    target = f":{check.port}{check.path or ''}"
    return (
        f"{check.type} {target} every {check.interval}, "
        f"timeout {check.timeout}, {check.retries} retries"
    )


def _service_row(service: ServiceConfig) -> ServiceRow:
    network = service.network
    return ServiceRow(
        name=service.name,
        vcpus=service.vcpus,
        memory_mb=service.memory_mb,
        interface=network.interface if network else "",
        guest_ip=(network.guest_ip or "") if network else "",
        health_check=health_check_text(service.health_check),
        links=[
            f"{link.env} → {link.protocol}://{link.service}:{link.port}"
            for link in service.links
        ],
        port_forwards=[
            f"{forward.host_port} → {forward.vm_port}"
            for forward in service.port_forwards
        ],
    )


def _service_rows(config: NodeConfig) -> list[ServiceRow]:
    return [_service_row(service) for service in config.services]


def read_published(store: ObjectStore) -> list[PublishedNode]:
    """Every node config published in ``store``, sorted by node type."""
    return [published_node(stored) for stored in list_stored(store)]


def with_publishers(nodes: list[PublishedNode]) -> list[PublishedNode]:
    """``nodes``, each with the latest revision that published its exact content.

    A config written by hand or by the ``enrich`` command matches no revision and
    keeps ``published_by = None``.
    """
    publishers = publishing_revisions((node.node_type, node.sha256) for node in nodes)
    return [
        replace(node, published_by=publishers.get((node.node_type, node.sha256)))
        for node in nodes
    ]
