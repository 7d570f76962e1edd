"""Django admin for every control-plane model, with the lists ops look for."""

from __future__ import annotations

from django.contrib import admin

from controlplane.models import (
    ConfigRepository,
    NodeConfigOutput,
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
