"""Routes of the REST API, mounted at ``/api/v1/`` under the ``api`` namespace."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver
from rest_framework.routers import DefaultRouter

from controlplane.api.nodeconfigs import NodeConfigViewSet
from controlplane.api.views import RepositoryViewSet, RevisionViewSet

app_name = "api"

router = DefaultRouter()
router.register("repositories", RepositoryViewSet, basename="repository")
router.register("revisions", RevisionViewSet, basename="revision")
router.register("node-configs", NodeConfigViewSet, basename="node-config")

urlpatterns: list[URLPattern | URLResolver] = list(router.urls)
