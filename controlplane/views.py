"""Dashboard pages and the health endpoint of the control plane."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import yaml
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from controlplane.objectstore import (
    ObjectNotFound,
    ObjectStore,
    ObjectStoreError,
    store_from_env,
)
from controlplane.publish import NODE_SUFFIX, NODES_PREFIX, is_node_config_key
from nodeagent.spec import NodeConfig, validate_node_config
from nodeagent.spec.problems import yaml_error

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceRow:
    """One service of a published node config, as the dashboard lists it."""

    name: str
    vcpus: int
    memory_mb: int
    interface: str  # the TAP device, "" for a service without network


@dataclass(frozen=True)
class PublishedNode:
    """A node config as found in the object store, with what its validation said."""

    key: str
    node_type: str
    etag: str
    text: str
    services: list[ServiceRow] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


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


def _service_rows(config: NodeConfig) -> list[ServiceRow]:
    return [
        ServiceRow(
            name=service.name,
            vcpus=service.vcpus,
            memory_mb=service.memory_mb,
            interface=service.network.interface if service.network else "",
        )
        for service in config.services
    ]


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


@never_cache
@login_required
@require_safe
def index(request: HttpRequest) -> HttpResponse:
    """The dashboard: node configs currently published in the object store."""
    context: dict[str, object] = {"nodes": [], "store": "", "store_error": ""}
    try:
        store = store_from_env(os.environ)
        context["store"] = store.describe()
        nodes = read_published(store)
    except ObjectStoreError as exc:
        log.warning("reading published node configs failed error=%s", exc)
        context["store_error"] = str(exc)
    else:
        context["nodes"] = nodes
        context["service_count"] = sum(len(node.services) for node in nodes)
    return render(request, "controlplane/index.html", context)


@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness for load balancers and compose: answers without login or database."""
    return JsonResponse({"status": "ok"})
