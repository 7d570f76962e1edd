"""Routes of the REST API, mounted at ``/api/v1/`` under the ``api`` namespace."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, path
from rest_framework.routers import DefaultRouter

from controlplane.api.nodeconfigs import NodeConfigViewSet
from controlplane.api.nodes import (
    NodeActualView,
    NodeEnrollView,
    NodeRevokeTokensView,
    NodeStatusView,
    NodeViewSet,
)
from controlplane.api.nodeviews import NodeDesiredView, ServiceViewSet
from controlplane.api.views import RepositoryViewSet, RevisionViewSet

app_name = "api"

router = DefaultRouter()
router.register("repositories", RepositoryViewSet, basename="repository")
router.register("revisions", RevisionViewSet, basename="revision")
router.register("node-configs", NodeConfigViewSet, basename="node-config")
router.register("nodes", NodeViewSet, basename="node")
router.register("services", ServiceViewSet, basename="service")

# Without a trailing slash, as the node agent calls them.
node_paths = [
    path("nodes/<str:name>/enroll", NodeEnrollView.as_view(), name="node-enroll"),
    path(
        "nodes/<str:name>/revoke-tokens",
        NodeRevokeTokensView.as_view(),
        name="node-revoke-tokens",
    ),
    path("nodes/<str:name>/status", NodeStatusView.as_view(), name="node-status"),
    path("nodes/<str:name>/actual", NodeActualView.as_view(), name="node-actual"),
    path("nodes/<str:name>/desired", NodeDesiredView.as_view(), name="node-desired"),
]

urlpatterns: list[URLPattern | URLResolver] = [*router.urls, *node_paths]
