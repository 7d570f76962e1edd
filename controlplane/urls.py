"""URL routes of the controlplane app: the dashboard and ``/healthz``."""

from __future__ import annotations

from django.urls import URLPattern, path, register_converter

from controlplane import views
from controlplane.dashboard import hostadmin, hosts, nodes, repositories, revisions


class RowIdConverter:
    """A database id: at most 18 digits, so it always fits a 64-bit column.

    A longer number would make the database raise (a 500) instead of a 404.
    """

    regex = "[0-9]{1,18}"

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value: int) -> str:
        return str(value)


register_converter(RowIdConverter, "rowid")

app_name = "controlplane"

urlpatterns: list[URLPattern] = [
    path("", repositories.index, name="index"),
    path("repositories/<slug:name>/", repositories.repository, name="repository"),
    path("repositories/<slug:name>/run", repositories.run_now, name="run"),
    path("revisions/", revisions.revision_list, name="revisions"),
    path("revisions/<rowid:pk>/", revisions.revision_detail, name="revision"),
    path("nodes/", nodes.node_types, name="nodes"),
    path("hosts/", hosts.host_list, name="hosts"),
    path("hosts/register", hostadmin.register_node, name="host-register"),
    path("hosts/<slug:name>/", hosts.host_detail, name="host"),
    path(
        "hosts/<slug:name>/enrollment-token",
        hostadmin.issue_token,
        name="host-enrollment-token",
    ),
    path(
        "hosts/<slug:name>/cancel-enrollment",
        hostadmin.cancel_enrollment,
        name="host-cancel-enrollment",
    ),
    path(
        "hosts/<slug:name>/revoke-tokens",
        hostadmin.revoke_tokens,
        name="host-revoke-tokens",
    ),
    path("hosts/<slug:name>/delete", hostadmin.delete_node, name="host-delete"),
    path("services/", hosts.service_map, name="services"),
    path("healthz", views.healthz, name="healthz"),
]
