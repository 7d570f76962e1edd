"""Managing nodes from the dashboard: register, enrollment tokens, revoke, delete.

The same actions as the REST API's operator endpoints (``/api/v1/nodes/``), for
operators only. An enrollment token is shown once, in the answer to the POST
that made it: it is never put in a URL, the session or a log line, and the
answer is not cached.
"""

from __future__ import annotations

import logging

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from controlplane.dashboard.hostforms import NodeForm, admin_context, operator_only
from controlplane.dashboard.hosts import host_list_page
from controlplane.models import Node
from controlplane.nodetokens import (
    cancel_enrollment_tokens,
    issue_enrollment_token,
    revoke_node_tokens,
)

log = logging.getLogger(__name__)

# Where the agent config shown with a new token expects the token; any
# absolute path works, this one sits next to the default agent.yaml.
ENROLLMENT_TOKEN_FILE = "/etc/firework/enrollment-token"  # noqa: S105 - a path


@never_cache
@login_required
@require_POST
def register_node(request: HttpRequest) -> HttpResponse:
    """Register a node, then show its page; a bad form goes back with its errors."""
    operator_only(request)
    form = NodeForm(request.POST)
    if not form.is_valid():
        return host_list_page(request, admin_context(request, form))
    node = form.save()
    log.info("node created node=%s user=%s", node.name, request.user.get_username())
    messages.success(
        request,
        f"Node {node.name} registered. Issue an enrollment token for its agent.",
    )
    return redirect("controlplane:host", name=node.name)


def managed_node(request: HttpRequest, name: str) -> Node:
    """The node named so, for an operator; 403 for anyone else, 404 if none."""
    operator_only(request)
    return get_object_or_404(Node, name=name)


def _audit(request: HttpRequest, what: str, node: Node, count: int) -> None:
    """Log a credential change made from the dashboard, with who made it."""
    log.info(
        "%s from the dashboard node=%s count=%s user=%s",
        what,
        node.name,
        count,
        request.user.get_username(),
    )


def agent_config(request: HttpRequest, node: Node) -> list[str]:
    """The agent.yaml lines that make ``node``'s agent enroll and report here."""
    lines = [f"node_name: {node.name}"]
    if node.labels and node.labels != [node.name]:
        # The agent reports as node_name; node_names says which configs it runs.
        lines.append("node_names: [" + ", ".join(node.labels) + "]")
    lines += [
        f"control_plane_url: {request.build_absolute_uri('/').rstrip('/')}",
        f"control_plane_enrollment_token_file: {ENROLLMENT_TOKEN_FILE}",
    ]
    return lines


@never_cache
@login_required
@require_POST
def issue_token(request: HttpRequest, name: str) -> HttpResponse:
    """Make an enrollment token and show it, in this answer only."""
    node = managed_node(request, name)
    token, record = issue_enrollment_token(node)
    log.info(
        "enrollment token issued from the dashboard node=%s id=%s user=%s",
        node.name,
        record.pk,
        request.user.get_username(),
    )
    context = {
        "node": node,
        "token": token,
        "expires_at": record.expires_at,
        "config_lines": agent_config(request, node),
        "token_file": ENROLLMENT_TOKEN_FILE,
    }
    return render(request, "controlplane/host_enrollment.html", context)


@login_required
@require_POST
def cancel_enrollment(request: HttpRequest, name: str) -> HttpResponse:
    """Make the node's unused enrollment tokens stop working; say how many."""
    node = managed_node(request, name)
    count = cancel_enrollment_tokens(node)
    _audit(request, "enrollment tokens cancelled", node, count)
    if count:
        messages.success(request, f"Cancelled the unused enrollment token of {name}.")
    else:
        messages.info(request, f"{name} had no unused enrollment token.")
    return redirect("controlplane:host", name=node.name)


@login_required
@require_POST
def revoke_tokens(request: HttpRequest, name: str) -> HttpResponse:
    """Revoke every live node token of the node; say how many."""
    node = managed_node(request, name)
    count = revoke_node_tokens(node)
    _audit(request, "node tokens revoked", node, count)
    noun = "token" if count == 1 else "tokens"
    messages.success(
        request,
        f"Revoked {count} node {noun} of {node.name}. "
        "Its agent needs a new enrollment token to report again.",
    )
    return redirect("controlplane:host", name=node.name)


@never_cache
@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def delete_node(request: HttpRequest, name: str) -> HttpResponse:
    """Ask first (GET), then delete the node with its tokens and history (POST)."""
    node = managed_node(request, name)
    if request.method != "POST":
        return render(request, "controlplane/host_delete.html", {"node": node})
    node.delete()
    log.info("node deleted node=%s user=%s", name, request.user.get_username())
    messages.success(request, f"Node {name} deleted, with its tokens and history.")
    return redirect("controlplane:hosts")
