"""Django admin for every control-plane model, with the lists ops look for."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from controlplane.models import (
    ConfigRepository,
    EnrollmentToken,
    Node,
    NodeConfigOutput,
    NodeToken,
    NodeTransition,
    Revision,
    WebhookDelivery,
)


@admin.register(ConfigRepository)
class ConfigRepositoryAdmin(admin.ModelAdmin[ConfigRepository]):
    list_display = ["name", "clone_url", "branch", "config_subdir", "active"]
    list_filter = ["active", "branch"]
    search_fields = ["name", "clone_url", "github_full_name"]


class NodeConfigOutputInline(admin.TabularInline[NodeConfigOutput, Revision]):
    model = NodeConfigOutput
    extra = 0
    fields = readonly_fields = ("node_type", "object_key", "etag", "sha256", "services")
    can_delete = False


@admin.register(Revision)
class RevisionAdmin(admin.ModelAdmin[Revision]):
    list_display = [
        "id",
        "repository",
        "short_sha",
        "ref",
        "trigger",
        "status",
        "queued_at",
        "duration",
        "published",
    ]
    list_filter = ["status", "trigger", "published", "repository"]
    search_fields = ["commit_sha", "delivery_id", "ref"]
    date_hierarchy = "queued_at"
    readonly_fields = [f.name for f in Revision._meta.fields]
    inlines = [NodeConfigOutputInline]

    @admin.display(description="commit")
    def short_sha(self, obj: Revision) -> str:
        return obj.commit_sha[:12]


@admin.register(NodeConfigOutput)
class NodeConfigOutputAdmin(admin.ModelAdmin[NodeConfigOutput]):
    list_display = ["revision", "node_type", "object_key", "etag"]
    list_filter = ["node_type"]
    search_fields = ["node_type", "object_key", "sha256"]
    readonly_fields = [f.name for f in NodeConfigOutput._meta.fields]


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin[WebhookDelivery]):
    list_display = [
        "received_at",
        "event",
        "delivery_id",
        "repository",
        "status_code",
        "accepted",
        "outcome",
    ]
    list_filter = ["accepted", "event", "status_code", "repository"]
    search_fields = ["delivery_id", "outcome"]
    readonly_fields = [f.name for f in WebhookDelivery._meta.fields]


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin[Node]):
    list_display = ["name", "labels", "agent_version", "last_seen_at", "created_at"]
    search_fields = ["name"]
    readonly_fields = ["created_at", "last_seen_at", "last_report", "last_report_at"]


# Tokens are made through the API or the node's enrollment, which show the token
# once; the admin can only see their hashes and revoke them.
@admin.register(NodeToken)
class NodeTokenAdmin(admin.ModelAdmin[NodeToken]):
    list_display = ["node", "short_hash", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["node"]
    readonly_fields = ["node", "token_sha256", "created_at", "last_used_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="sha256")
    def short_hash(self, obj: NodeToken) -> str:
        return obj.token_sha256[:12]


@admin.register(EnrollmentToken)
class EnrollmentTokenAdmin(admin.ModelAdmin[EnrollmentToken]):
    list_display = ["node", "short_hash", "created_at", "expires_at", "used_at"]
    list_filter = ["node"]
    readonly_fields = ["node", "token_sha256", "created_at", "used_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="sha256")
    def short_hash(self, obj: EnrollmentToken) -> str:
        return obj.token_sha256[:12]


@admin.register(NodeTransition)
class NodeTransitionAdmin(admin.ModelAdmin[NodeTransition]):
    list_display = ["at", "node", "service", "field", "old_value", "new_value"]
    list_filter = ["field", "node"]
    search_fields = ["service"]
    date_hierarchy = "at"
    readonly_fields = [f.name for f in NodeTransition._meta.fields]
