"""Node pages: the hosts running agents, desired state against actual state.

"Node types" (:mod:`controlplane.dashboard.nodes`) are the published configs;
these pages are about the nodes themselves: what each one reported, how that
compares with what is published for its labels, and which commit runs where.

Each page renders its live part on its own for ``?fragment=1``; the page's
script fetches that every few seconds and swaps it in, so the page follows the
agents' reports without reloading.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from controlplane import nodestatus
from controlplane.dashboard.access import is_operator
from controlplane.dashboard.hostforms import admin_context
from controlplane.dashboard.hostrows import (
    counts_of,
    placements,
    revision_pairs,
    service_rows,
)
from controlplane.dashboard.live import live_page
from controlplane.models import Node, NodeTransition
from controlplane.nodetokens import pending_enrollment

TRANSITIONS_SHOWN = 50


def host_list_page(request: HttpRequest, admin: dict[str, object]) -> HttpResponse:
    """The node list with the operator forms in ``admin`` (see ``admin_context``)."""
    now = timezone.now()
    rows = [
        {"view": view, "revisions": revision_pairs(view), "counts": counts_of(view)}
        for view in nodestatus.node_views(now)
    ]
    return live_page(
        request,
        "controlplane/hosts.html",
        "controlplane/includes/hosts_table.html",
        {"rows": rows, "now": now} | admin,
    )


@never_cache
@login_required
@require_safe
def host_list(request: HttpRequest) -> HttpResponse:
    """Every node: its state, labels, last report, revisions and service counts."""
    return host_list_page(request, admin_context(request))


@never_cache
@login_required
@require_safe
def host_detail(request: HttpRequest, name: str) -> HttpResponse:
    """One node: why it is in its state, each service's desired and actual side."""
    now = timezone.now()
    try:
        view = nodestatus.node_view(name, now)
    except Node.DoesNotExist:
        raise Http404(f"No node named {name}.") from None
    transitions = NodeTransition.objects.filter(node__name=name).order_by("-at", "-id")[
        :TRANSITIONS_SHOWN
    ]
    context = {
        "view": view,
        "revisions": revision_pairs(view),
        "services": service_rows(view),
        "transitions": list(transitions),
        "transitions_shown": TRANSITIONS_SHOWN,
        "now": now,
        "can_manage": is_operator(request.user),
    }
    if context["can_manage"] and request.GET.get("fragment") != "1":
        # The credentials card is outside the live part: the page only.
        context["enrollment"] = pending_enrollment(name)
    return live_page(
        request,
        "controlplane/host.html",
        "controlplane/includes/host_live.html",
        context,
    )


@never_cache
@login_required
@require_safe
def service_map(request: HttpRequest) -> HttpResponse:
    """Per service: the nodes running it or meant to, and the revision they run."""
    now = timezone.now()
    return live_page(
        request,
        "controlplane/host_services.html",
        "controlplane/includes/host_services_table.html",
        {"services": placements(nodestatus.node_views(now)), "now": now},
    )
