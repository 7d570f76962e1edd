"""Node configs as published in the object store, one per node type.

The API reads the store itself, not the database: what it shows is what agents
fetch (through :mod:`controlplane.publishedconfigs`, which also names the
revision that published each content).
A store that cannot be reached or is misconfigured gives a 503 with the reason.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import serializers, status, viewsets
from rest_framework.exceptions import APIException, NotFound
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from controlplane.api.permissions import IsOperatorOrReadOnly
from controlplane.objectstore import ObjectStore, ObjectStoreError, store_from_env
from controlplane.publish import node_config_key
from controlplane.publishedconfigs import (
    StoredConfig,
    list_stored,
    publishing_revisions,
    read_stored,
)
from nodeagent.spec import NodeConfig
from nodeagent.spec.fields import DNS_LABEL

log = logging.getLogger(__name__)

# What the schema promises; routing takes any text so that a bad node type gets
# the API's JSON 404 from node_type_or_404, not the site's HTML one.
NODE_TYPE_PATTERN = r"^[a-z0-9][a-z0-9.-]{0,252}$"
NODE_TYPE_ROUTE = r".+"
YAML_MEDIA_TYPE = "application/yaml"


class StoreUnavailable(APIException):
    """The object store could not be read."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "the object store is unavailable"
    default_code = "store_unavailable"


@dataclass
class ServiceSummary:
    """One service of a node config, as the API shows it."""

    name: str
    image: str
    vcpus: int
    memory_mb: int
    interface: str = ""
    guest_ip: str = ""


@dataclass
class PublishedConfig:
    """A node config found in the store, checked the way an agent checks it."""

    node_type: str
    key: str
    etag: str
    sha256: str
    size_bytes: int
    content: str
    services: list[ServiceSummary] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    revision: int | None = None
    repository: str | None = None


def node_type_or_404(value: str) -> str:
    """``value`` if it is a node type (a DNS name), else a 404."""
    labels = value.split(".")
    if len(value) > 253 or not all(DNS_LABEL.fullmatch(part) for part in labels):
        raise NotFound("no such node type: node types are DNS names")
    return value


def open_store() -> ObjectStore:
    """The store named by the environment, or a 503 saying why not."""
    try:
        return store_from_env(os.environ)
    except ObjectStoreError as exc:
        log.warning("object store not configured error=%s", exc)
        raise StoreUnavailable(f"object store not configured: {exc}") from exc


def read_config(store: ObjectStore, key: str) -> PublishedConfig | None:
    """The config at ``key``; None if it vanished (or never was there)."""
    try:
        stored = read_stored(store, key)
    except ObjectStoreError as exc:
        log.warning("reading node config failed key=%s error=%s", key, exc)
        raise StoreUnavailable(f"object store unavailable: {exc}") from exc
    return None if stored is None else _published_config(stored)


def _published_config(stored: StoredConfig) -> PublishedConfig:
    return PublishedConfig(
        node_type=stored.node_type,
        key=stored.key,
        etag=stored.etag,
        sha256=stored.sha256,
        size_bytes=len(stored.data),
        content=stored.text,
        services=_summaries(stored.config) if stored.config else [],
        errors=list(stored.errors),
        warnings=list(stored.warnings),
    )


def _summaries(parsed: NodeConfig) -> list[ServiceSummary]:
    return [
        ServiceSummary(
            name=service.name,
            image=service.image,
            vcpus=service.vcpus,
            memory_mb=service.memory_mb,
            interface=service.network.interface if service.network else "",
            guest_ip=str(service.network.guest_ip or "") if service.network else "",
        )
        for service in parsed.services
    ]


def list_configs(store: ObjectStore) -> list[PublishedConfig]:
    """Every node config in the store, sorted by node type."""
    try:
        stored = list_stored(store)
    except ObjectStoreError as exc:
        log.warning("listing node configs failed error=%s", exc)
        raise StoreUnavailable(f"object store unavailable: {exc}") from exc
    configs = [_published_config(config) for config in stored]
    attribute_revisions(configs)
    return configs


def attribute_revisions(configs: Iterable[PublishedConfig]) -> None:
    """Name the newest revision that published each config's content."""
    configs = list(configs)
    publishers = publishing_revisions((c.node_type, c.sha256) for c in configs)
    for config in configs:
        revision = publishers.get((config.node_type, config.sha256))
        if revision is not None:
            config.revision = revision.pk
            config.repository = revision.repository.name


class ServiceSummarySerializer(serializers.Serializer[ServiceSummary]):
    """One service of a published node config."""

    name = serializers.CharField()
    image = serializers.CharField()
    vcpus = serializers.IntegerField()
    memory_mb = serializers.IntegerField()
    interface = serializers.CharField(help_text="TAP device; empty without network")
    guest_ip = serializers.CharField(help_text="empty when assigned by the agent")


# Any: the stubs type a plain serializer's instance as one object, not a list.
class NodeConfigSerializer(serializers.Serializer[Any]):
    """A published node config without its text."""

    node_type = serializers.CharField()
    key = serializers.CharField(help_text="object key in the store")
    etag = serializers.CharField()
    sha256 = serializers.CharField()
    size_bytes = serializers.IntegerField()
    services = ServiceSummarySerializer(many=True)
    errors = serializers.ListField(  # type: ignore[assignment]  # see serializers
        child=serializers.CharField(), help_text="why an agent would refuse it"
    )
    warnings = serializers.ListField(child=serializers.CharField())
    revision = serializers.IntegerField(
        allow_null=True, help_text="id of the revision that produced this content"
    )
    repository = serializers.CharField(allow_null=True)


class NodeConfigDetailSerializer(NodeConfigSerializer):
    """A published node config with its YAML text."""

    content = serializers.CharField(help_text="the YAML text agents fetch")


class NodeConfigYamlRenderer(BaseRenderer):
    """The node config's YAML text as stored (``?format=yaml`` or Accept)."""

    media_type = YAML_MEDIA_TYPE
    format = "yaml"
    charset = "utf-8"

    def render(
        self,
        data: Any,
        accepted_media_type: str | None = None,
        renderer_context: Mapping[str, Any] | None = None,
    ) -> bytes:
        content = data.get("content") if isinstance(data, Mapping) else None
        if isinstance(content, str):
            return content.encode("utf-8")
        return yaml.safe_dump(data, sort_keys=False).encode("utf-8")


_NODE_TYPE = OpenApiParameter(
    "node_type",
    OpenApiTypes.STR,
    OpenApiParameter.PATH,
    description="node type (label), a DNS name such as general-purpose",
    pattern=NODE_TYPE_PATTERN,
)
_UNAVAILABLE = OpenApiResponse(description="the object store cannot be read")


@extend_schema_view(
    list=extend_schema(
        summary="List node configs published in the object store",
        responses={200: NodeConfigSerializer(many=True), 503: _UNAVAILABLE},
    ),
    retrieve=extend_schema(
        summary="Show one published node config with its YAML",
        parameters=[_NODE_TYPE],
        responses={
            (200, "application/json"): NodeConfigDetailSerializer,
            (200, YAML_MEDIA_TYPE): OpenApiTypes.STR,
            404: OpenApiResponse(description="no config for this node type"),
            503: _UNAVAILABLE,
        },
    ),
)
class NodeConfigViewSet(viewsets.ViewSet):
    """Node configs as agents see them: ``nodes/<node-type>.yaml`` in the store."""

    permission_classes = [IsOperatorOrReadOnly]
    lookup_field = "node_type"
    lookup_value_regex = NODE_TYPE_ROUTE

    def get_renderers(self) -> list[BaseRenderer]:
        renderers = super().get_renderers()
        if getattr(self, "action", None) == "retrieve":
            renderers.append(NodeConfigYamlRenderer())
        return renderers

    # ``**kwargs``: format-suffix routes (``general-purpose.yaml``) pass ``format``.
    def list(self, request: Request, **kwargs: Any) -> Response:
        """Every node config currently in the store."""
        configs = list_configs(open_store())
        return Response(NodeConfigSerializer(configs, many=True).data)

    def retrieve(self, request: Request, node_type: str, **kwargs: Any) -> Response:
        """One node config: its text, its services and who published it."""
        key = node_config_key(node_type_or_404(node_type))
        config = read_config(open_store(), key)
        if config is None:
            raise NotFound(f"no node config published for {node_type}")
        attribute_revisions([config])
        body = NodeConfigDetailSerializer(config).data
        return Response(body, headers={"ETag": config.etag})

    def finalize_response(
        self, request: Request, response: Response, *args: Any, **kwargs: Any
    ) -> Response:
        # Errors stay JSON even when the client asked for the YAML text.
        if response.status_code >= 400 and isinstance(
            getattr(request, "accepted_renderer", None), NodeConfigYamlRenderer
        ):
            request.accepted_renderer = JSONRenderer()
            request.accepted_media_type = JSONRenderer.media_type
        return super().finalize_response(request, response, *args, **kwargs)
