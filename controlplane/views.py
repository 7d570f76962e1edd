"""Endpoints of the control plane outside the dashboard; the dashboard's pages are
in :mod:`controlplane.dashboard`."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_safe


@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness for load balancers and compose: answers without login or database."""
    return JsonResponse({"status": "ok"})
