"""Desired state of a node, and services across nodes: which commit runs where.

Both compare what is published in the object store with what nodes report,
through :mod:`controlplane.nodestatus`; neither writes anything.
"""

from __future__ import annotations

import logging
from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, viewsets
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.api.nodeauth import ReadOwnNodeOrUser, requesting_node
from controlplane.api.nodeconfigs import StoreUnavailable
from controlplane.api.nodes import USERS_ONLY, _node_or_user_auth
from controlplane.api.permissions import IsOperatorOrReadOnly
from controlplane.models import Node
from controlplane.nodestatus import (
    SERVICE_STATUSES,
    NodeView,
    desired_services,
    views_for,
)
from controlplane.objectstore import ObjectStoreError
from controlplane.publishedlabels import PublishedLabel, load_published, open_store

log = logging.getLogger(__name__)


class DesiredNodeTypeSerializer(serializers.Serializer[dict[str, Any]]):
    """One node type of a node and what is published for it."""

    node_type = serializers.CharField()
    published = serializers.BooleanField(help_text="false: no config in the store")
    revision = serializers.CharField(help_text="the object's ETag, without quotes")
    sha256 = serializers.CharField(help_text="what a local-directory agent reports")
    commit = serializers.CharField(help_text="of the revision that published it")
    # the name shadows Serializer.errors, as in NodeConfigSerializer
    errors = serializers.ListField(  # type: ignore[assignment]
        child=serializers.CharField(), help_text="why an agent would refuse it"
    )


class DesiredSerializer(serializers.Serializer[dict[str, Any]]):
    """What a node should run: its node types' configs, merged as the agent does."""

    node = serializers.CharField()
    node_types = DesiredNodeTypeSerializer(many=True)
    services = serializers.ListField(
        child=serializers.DictField(),
        help_text="service entries of the node configs, each with its node_type",
    )


def desired_document(node: Node, published: dict[str, PublishedLabel]) -> Any:
    """The body of ``GET nodes/<name>/desired``."""
    labels = [str(label) for label in node.labels or []]
    node_types = []
    for label in labels:
        config = published.get(label)
        node_types.append(
            {
                "node_type": label,
                "published": config is not None,
                "revision": config.etag if config else "",
                "sha256": config.sha256 if config else "",
                "commit": config.commit if config else "",
                "errors": list(config.errors) if config else [],
            }
        )
    merged = desired_services(labels, published)
    services = [
        {**merged[name][1], "node_type": merged[name][0]} for name in sorted(merged)
    ]
    body = {"node": node.name, "node_types": node_types, "services": services}
    return DesiredSerializer(body).data


class NodeDesiredView(APIView):
    """``GET nodes/<name>/desired``: the published services for its node types."""

    authentication_classes = _node_or_user_auth()
    permission_classes = [ReadOwnNodeOrUser]

    @extend_schema(
        summary="Show what a node should run (users, or the node itself)",
        responses={
            200: DesiredSerializer,
            404: OpenApiResponse(description="no such node"),
            503: OpenApiResponse(description="the object store cannot be read"),
        },
    )
    def get(self, request: Request, name: str) -> Response:
        node = get_object_or_404(Node, name=name)
        try:
            published = load_published(open_store(), node.labels or [])
        except ObjectStoreError as exc:
            log.warning("reading published node configs failed error=%s", exc)
            raise StoreUnavailable(f"object store unavailable: {exc}") from exc
        log.debug(
            "node desired read node=%s by_node=%s", name, requesting_node(request)
        )
        return Response(desired_document(node, published))


# Any: the stubs type a plain serializer's instance as one object, not a list.
class ServiceEntrySerializer(serializers.Serializer[Any]):
    """One service on one node: its verdict and the revisions involved."""

    service = serializers.CharField()
    node = serializers.CharField()
    node_type = serializers.CharField(help_text="the label publishing it; '' if none")
    status = serializers.CharField(help_text="one of " + ", ".join(SERVICE_STATUSES))
    reason = serializers.CharField(help_text="why it is not ok; '' when ok")
    node_status = serializers.CharField()
    applied = serializers.CharField(help_text="revision the node runs for node_type")
    applied_commit = serializers.CharField(help_text="'' when no revision matches")
    published = serializers.CharField(help_text="revision published for node_type")
    published_commit = serializers.CharField()
    state = serializers.CharField(help_text="as reported; '' when not running")
    health = serializers.CharField(help_text="as reported; '' when not running")


def service_entries(view: NodeView) -> list[dict[str, Any]]:
    """One entry per service of ``view``, in the shape of the serializer."""
    entries = []
    for service in view.services:
        actual = service.actual or {}
        health = actual.get("health")
        label = service.node_type
        entries.append(
            {
                "service": service.name,
                "node": view.name,
                "node_type": label,
                "status": service.status,
                "reason": service.reason,
                "node_status": view.status,
                "applied": view.applied.get(label, ""),
                "applied_commit": view.applied_commits.get(label, ""),
                "published": view.published.get(label, ""),
                "published_commit": view.published_commits.get(label, ""),
                "state": str(actual.get("state") or ""),
                "health": str(health.get("status") or "")
                if isinstance(health, dict)
                else "",
            }
        )
    return entries


_FILTERS = [
    OpenApiParameter("service", OpenApiTypes.STR, description="only this service"),
    OpenApiParameter("node", OpenApiTypes.STR, description="only this node"),
]


class ServiceViewSet(viewsets.GenericViewSet[Any]):
    """Services across nodes: which commit runs where, and whether it is ok."""

    authentication_classes = _node_or_user_auth()
    permission_classes = [IsOperatorOrReadOnly]
    serializer_class = ServiceEntrySerializer

    @extend_schema(
        summary="List services on every node with their status and revisions",
        auth=USERS_ONLY,
        parameters=_FILTERS,
    )
    def list(self, request: Request) -> Response:
        """One entry per service and node, by service then node."""
        nodes = Node.objects.order_by("name")
        if node := request.query_params.get("node"):
            nodes = nodes.filter(name=node)
        entries = [e for view in views_for(nodes) for e in service_entries(view)]
        if service := request.query_params.get("service"):
            entries = [e for e in entries if e["service"] == service]
        entries.sort(key=lambda e: (e["service"], e["node"]))
        # the paginator slices any sequence; the stubs only name querysets
        page = self.paginate_queryset(entries)  # type: ignore[arg-type]
        if page is None:
            return Response(ServiceEntrySerializer(entries, many=True).data)
        data = ServiceEntrySerializer(page, many=True).data
        return self.get_paginated_response(data)
