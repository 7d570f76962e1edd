"""Serializers of nodes, their tokens, and the status report an agent sends.

The report is the agent's ``/status`` document (see ``nodeagent.httpapi``) plus
``agent_version`` and ``host``; it is checked field by field, so a bad report is
refused with the path of the field that is wrong.
"""

from __future__ import annotations

import re
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from controlplane.api.nodeconfigs import NODE_TYPE_PATTERN
from controlplane.models import Node
from controlplane.nodestatus import NODE_STATES, NodeView, views_for
from nodeagent.spec.fields import DNS_LABEL
from nodeagent.status import HEALTH_STATES, PHASES, SERVICE_STATES

_NODE_TYPE = re.compile(NODE_TYPE_PATTERN)
MAX_LABELS = 32
MAX_SERVICES = 1000
MAX_HOST_FACTS = 64


def _node_types(value: list[str]) -> list[str]:
    for label in value:
        if _NODE_TYPE.fullmatch(label) is None:
            raise serializers.ValidationError(f"{label!r} is not a node type")
    if len(set(value)) != len(value):
        raise serializers.ValidationError("node types must not repeat")
    return value


class NodeSerializer(serializers.ModelSerializer[Node]):
    """A node as listed: who it is, when it last reported, and whether it converged.

    The desired-against-actual fields come from :mod:`controlplane.nodestatus`;
    a list passes them all in ``context["node_views"]`` (one store read), a
    single node computes its own.
    """

    url = serializers.HyperlinkedIdentityField(
        view_name="api:node-detail", lookup_field="name"
    )
    labels = serializers.ListField(
        child=serializers.CharField(max_length=253),
        max_length=MAX_LABELS,
        help_text="node types this node runs",
    )

    class Meta:
        model = Node
        fields = [
            "name",
            "url",
            "labels",
            "created_at",
            "last_seen_at",
            "last_report_at",
            "agent_version",
            "status",
            "reasons",
            "counts",
            "applied",
            "published",
        ]
        read_only_fields = [
            "created_at",
            "last_seen_at",
            "last_report_at",
            "agent_version",
        ]

    status = serializers.SerializerMethodField(
        help_text="desired against actual: one of " + ", ".join(NODE_STATES)
    )
    reasons = serializers.SerializerMethodField(
        help_text="why the node is not converged, one line each"
    )
    counts = serializers.SerializerMethodField(
        help_text="how many services have each service status"
    )
    applied = serializers.SerializerMethodField(
        help_text="node type -> revision the agent reports it runs"
    )
    published = serializers.SerializerMethodField(
        help_text="node type -> revision published now, in the agent's kind of string"
    )

    def validate_labels(self, value: list[str]) -> list[str]:
        return _node_types(value)

    def node_view(self, obj: Node) -> NodeView:
        views: dict[str, NodeView] = self.context.setdefault("node_views", {})
        if obj.name not in views:
            views.update((view.name, view) for view in views_for([obj]))
        return views[obj.name]

    @extend_schema_field(serializers.CharField())
    def get_status(self, obj: Node) -> str:
        return self.node_view(obj).status

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_reasons(self, obj: Node) -> list[str]:
        return self.node_view(obj).reasons

    @extend_schema_field(serializers.DictField(child=serializers.IntegerField()))
    def get_counts(self, obj: Node) -> dict[str, int]:
        return self.node_view(obj).counts

    @extend_schema_field(serializers.DictField(child=serializers.CharField()))
    def get_applied(self, obj: Node) -> dict[str, str]:
        return self.node_view(obj).applied

    @extend_schema_field(serializers.DictField(child=serializers.CharField()))
    def get_published(self, obj: Node) -> dict[str, str]:
        return self.node_view(obj).published


class ReportedServiceSerializer(serializers.Serializer[dict[str, Any]]):
    """One service of the latest report, in short."""

    name = serializers.CharField(read_only=True)
    state = serializers.CharField(read_only=True)
    health = serializers.CharField(read_only=True)


class ReportSummarySerializer(serializers.Serializer[dict[str, Any]]):
    """The gist of a node's latest report."""

    time = serializers.DateTimeField(read_only=True, allow_null=True)
    phase = serializers.CharField(read_only=True)
    last_revision = serializers.CharField(read_only=True)
    revisions = serializers.DictField(child=serializers.CharField(), read_only=True)
    stale = serializers.BooleanField(read_only=True)
    stale_reason = serializers.CharField(read_only=True)
    services = ReportedServiceSerializer(many=True, read_only=True)


def report_summary(report: Any) -> dict[str, Any] | None:
    """The fields of :class:`ReportSummarySerializer` from a stored report."""
    if not isinstance(report, dict):
        return None
    services = [
        {
            "name": s.get("name", ""),
            "state": s.get("state", ""),
            "health": (s.get("health") or {}).get("status", ""),
        }
        for s in report.get("services") or []
    ]
    return {
        "time": report.get("time"),
        "phase": report.get("phase", ""),
        "last_revision": report.get("last_revision", ""),
        "revisions": report.get("revisions") or {},
        "stale": bool(report.get("stale")),
        "stale_reason": report.get("stale_reason", ""),
        "services": services,
    }


class NodeDetailSerializer(NodeSerializer):
    """A node with the gist of its latest report."""

    report = serializers.SerializerMethodField(
        help_text="the gist of the latest report; null before the first"
    )

    class Meta(NodeSerializer.Meta):
        fields = [*NodeSerializer.Meta.fields, "report"]
        read_only_fields = [*NodeSerializer.Meta.read_only_fields, "report"]

    @extend_schema_field(ReportSummarySerializer(allow_null=True))
    def get_report(self, obj: Node) -> dict[str, Any] | None:
        return report_summary(obj.last_report)


class EnrollmentTokenSerializer(serializers.Serializer[dict[str, Any]]):
    """A new enrollment token: shown in this answer only."""

    token = serializers.CharField(read_only=True, help_text="fwe_...; shown once")
    expires_at = serializers.DateTimeField(read_only=True)


class EnrollRequestSerializer(serializers.Serializer[dict[str, Any]]):
    """What a node sends to enroll."""

    enrollment_token = serializers.CharField(max_length=200, write_only=True)


class EnrolledSerializer(serializers.Serializer[dict[str, Any]]):
    """The node token an enrollment bought: shown in this answer only."""

    node = serializers.CharField(read_only=True)
    token = serializers.CharField(read_only=True, help_text="fwn_...; shown once")


class RevokedSerializer(serializers.Serializer[dict[str, Any]]):
    """How many node tokens were revoked."""

    revoked = serializers.IntegerField(read_only=True)


class CancelledSerializer(serializers.Serializer[dict[str, Any]]):
    """How many unused enrollment tokens were cancelled (0 or 1)."""

    cancelled = serializers.IntegerField(read_only=True)


class HealthReportSerializer(serializers.Serializer[dict[str, Any]]):
    """The latest health check of one service."""

    # Not a ChoiceField: its enum would clash by name with Revision.status in
    # the schema.
    status = serializers.CharField(help_text="one of: " + ", ".join(HEALTH_STATES))
    last_checked = serializers.DateTimeField(allow_null=True, required=False)
    failures = serializers.IntegerField(min_value=0, default=0)
    last_error = serializers.CharField(allow_blank=True, max_length=2000, default="")

    def validate_status(self, value: str) -> str:
        if value not in HEALTH_STATES:
            raise serializers.ValidationError(
                f"{value[:40]!r} is not one of: {', '.join(HEALTH_STATES)}"
            )
        return value


class ServiceReportSerializer(serializers.Serializer[dict[str, Any]]):
    """One service as the agent sees it."""

    name = serializers.RegexField(rf"^(?:{DNS_LABEL.pattern})\Z", max_length=63)
    state = serializers.ChoiceField(choices=SERVICE_STATES)
    pid = serializers.IntegerField(min_value=0, default=0)
    health = HealthReportSerializer()
    guest_ip = serializers.CharField(allow_blank=True, max_length=64, default="")
    restarts = serializers.IntegerField(min_value=0, default=0)
    last_error = serializers.CharField(allow_blank=True, max_length=2000, default="")
    next_restart_at = serializers.DateTimeField(allow_null=True, required=False)


class HostFactsField(serializers.DictField):
    """Facts about the host: names to strings, numbers, booleans or null."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(child=serializers.JSONField(), **kwargs)

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        facts: dict[str, Any] = super().to_internal_value(data)
        if len(facts) > MAX_HOST_FACTS:
            raise serializers.ValidationError(f"at most {MAX_HOST_FACTS} facts")
        for key, value in facts.items():
            if len(key) > 100 or not isinstance(value, str | int | float | bool | None):
                raise serializers.ValidationError(
                    f"{key[:100]!r}: a fact is a string, number, boolean or null"
                )
        return facts


class StatusReportSerializer(serializers.Serializer[dict[str, Any]]):
    """The agent's ``/status`` document, with its version and host facts."""

    node = serializers.CharField(max_length=253)
    last_revision = serializers.CharField(allow_blank=True, max_length=2000)
    services = ServiceReportSerializer(many=True)
    phase = serializers.ChoiceField(choices=PHASES)
    labels = serializers.ListField(
        child=serializers.CharField(max_length=253), max_length=MAX_LABELS
    )
    revisions = serializers.DictField(child=serializers.CharField(max_length=200))
    stale = serializers.BooleanField()
    stale_reason = serializers.CharField(allow_blank=True, max_length=2000)
    stale_since = serializers.DateTimeField(allow_null=True)
    time = serializers.DateTimeField()
    agent_version = serializers.CharField(
        required=False, allow_blank=True, max_length=100
    )
    host = HostFactsField(required=False)

    def validate_services(self, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if len(value) > MAX_SERVICES:
            raise serializers.ValidationError(f"at most {MAX_SERVICES} services")
        names = [service["name"] for service in value]
        if len(set(names)) != len(names):
            raise serializers.ValidationError("service names must not repeat")
        return value
