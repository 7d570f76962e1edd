"""The node configs the object store serves to agents, as the dashboard shows them.

Each stored config is validated the way an agent validates it, so a config that
agents would reject is flagged, and matched by content hash to the revision that
published it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import yaml
from django.db.models import Q

from controlplane.models import NodeConfigOutput, Revision
from controlplane.objectstore import ObjectNotFound, ObjectStore
from controlplane.publish import NODE_SUFFIX, NODES_PREFIX, is_node_config_key
from nodeagent.spec import HealthCheck, NodeConfig, ServiceConfig, validate_node_config
from nodeagent.spec.problems import yaml_error


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


def node_type_of(key: str) -> str:
    """``general-purpose`` for ``nodes/general-purpose.yaml``, else ``""``.

    Agents fetch exactly ``nodes/<label>.yaml``; anything else under ``nodes/``
    is never read by a node, so the dashboard does not pretend it is published.
    """
    if not is_node_config_key(key):
        return ""
    return key.removeprefix(NODES_PREFIX).removesuffix(NODE_SUFFIX)


def parse_published(key: str, data: bytes, etag: str) -> PublishedNode:
    """Validate one stored node config the way an agent would."""
    text = data.decode("utf-8", errors="replace")
    services, errors, warnings = _check(key, text)
    return PublishedNode(
        key=key,
        node_type=node_type_of(key),
        etag=etag,
        text=text,
        sha256=hashlib.sha256(data).hexdigest(),
        services=services,
        errors=errors,
        warnings=warnings,
    )


def _check(key: str, text: str) -> tuple[list[ServiceRow], list[str], list[str]]:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return [], [f"{key}: {yaml_error(exc)}"], []
    config, errors, warnings = validate_node_config(raw, key)
    services = _service_rows(config) if config else []
    return services, [str(p) for p in errors], [str(p) for p in warnings]


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
    nodes = []
    for key in store.list(NODES_PREFIX):
        if not node_type_of(key):
            continue
        try:
            stored = store.get(key)
        except ObjectNotFound:
            continue  # deleted by a publish between our list and get
        nodes.append(parse_published(key, stored.data, stored.etag))
    return nodes


def with_publishers(nodes: list[PublishedNode]) -> list[PublishedNode]:
    """``nodes``, each with the latest revision that published its exact content.

    A config written by hand or by the ``enrich`` command matches no revision and
    keeps ``published_by = None``.
    """
    if not nodes:
        return nodes
    matches = (
        NodeConfigOutput.objects.filter(
            Q(revision__published=True) | Q(revision__status=Revision.Status.SUCCEEDED),
            node_type__in={node.node_type for node in nodes},
            sha256__in={node.sha256 for node in nodes},
        )
        .order_by("-revision__queued_at", "-revision_id")
        .values_list("node_type", "sha256", "revision_id")
    )
    latest: dict[tuple[str, str], int] = {}
    for node_type, sha256, revision_id in matches:
        latest.setdefault((node_type, sha256), revision_id)
    revisions = Revision.objects.select_related("repository").in_bulk(latest.values())
    return [
        replace(
            node,
            published_by=revisions.get(latest.get((node.node_type, node.sha256), 0)),
        )
        for node in nodes
    ]
