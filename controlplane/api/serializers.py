"""Serializers of repositories, revisions and run requests.

Secrets never pass through here: a repository names the environment variables
that hold its webhook secret and access token, and the API only says whether
each is set, never its value.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.contrib.auth.models import User
from rest_framework import serializers

from controlplane.api import validators
from controlplane.envvars import EnvError
from controlplane.models import ConfigRepository, NodeConfigOutput, Revision

log = logging.getLogger(__name__)


def _secret_is_set(read: Callable[[], str], repository: str, field: str) -> bool:
    try:
        return bool(read())
    except EnvError as exc:
        # The message names the variable and file, never the value.
        log.warning(
            "secret unreadable repository=%s field=%s error=%s", repository, field, exc
        )
        return False


class RepositorySerializer(serializers.ModelSerializer[ConfigRepository]):
    """A config repository; secrets appear as variable names and set/unset flags."""

    url = serializers.HyperlinkedIdentityField(view_name="api:repository-detail")
    webhook_secret_configured = serializers.SerializerMethodField(
        help_text="whether the variable (or its _FILE) is set for the web process"
    )
    access_token_configured = serializers.SerializerMethodField(
        help_text="whether the variable (or its _FILE) is set for the web process"
    )

    class Meta:
        model = ConfigRepository
        fields = [
            "id",
            "url",
            "name",
            "clone_url",
            "github_full_name",
            "branch",
            "config_subdir",
            "webhook_secret_env",
            "webhook_secret_configured",
            "access_token_env",
            "access_token_configured",
            "active",
            "allow_empty",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at"]
        extra_kwargs = {"clone_url": {"help_text": "Git URL or absolute path"}}

    def get_webhook_secret_configured(self, obj: ConfigRepository) -> bool:
        return _secret_is_set(obj.webhook_secret, obj.name, "webhook_secret_env")

    def get_access_token_configured(self, obj: ConfigRepository) -> bool:
        return _secret_is_set(obj.access_token, obj.name, "access_token_env")

    def validate_clone_url(self, value: str) -> str:
        return validators.clone_url(value)

    def validate_branch(self, value: str) -> str:
        return validators.branch_name(value)

    def validate_config_subdir(self, value: str) -> str:
        return validators.config_subdir(value)

    def validate_webhook_secret_env(self, value: str) -> str:
        return validators.env_name(value) if value else value

    def validate_access_token_env(self, value: str) -> str:
        return validators.env_name(value) if value else value

    def validate_github_full_name(self, value: str) -> str:
        owner, slash, name = value.partition("/")
        if value and not (owner and slash and name and "/" not in name):
            raise serializers.ValidationError("must be owner/name, as GitHub sends it")
        return value


class ProblemSerializer(serializers.Serializer[dict[str, str]]):
    """One validation error or warning of a run."""

    file = serializers.CharField(read_only=True)
    service = serializers.CharField(read_only=True)
    message = serializers.CharField(read_only=True)


class OutputSerializer(serializers.ModelSerializer[NodeConfigOutput]):
    """The node config a revision produced for one node type."""

    class Meta:
        model = NodeConfigOutput
        fields = ["node_type", "object_key", "etag", "sha256", "services"]

    services = serializers.ListField(child=serializers.CharField(), read_only=True)


class RevisionSerializer(serializers.ModelSerializer[Revision]):
    """One enrichment run, as listed."""

    url = serializers.HyperlinkedIdentityField(view_name="api:revision-detail")
    repository_name = serializers.CharField(source="repository.name", read_only=True)
    requested_by = serializers.SlugRelatedField[User](
        slug_field="username", read_only=True
    )
    duration_seconds = serializers.SerializerMethodField()
    error_count = serializers.SerializerMethodField()
    warning_count = serializers.SerializerMethodField()

    class Meta:
        model = Revision
        fields = [
            "id",
            "url",
            "repository",
            "repository_name",
            "ref",
            "commit_sha",
            "trigger",
            "status",
            "delivery_id",
            "requested_by",
            "queued_at",
            "started_at",
            "finished_at",
            "duration_seconds",
            "attempts",
            "published",
            "error_count",
            "warning_count",
        ]
        read_only_fields = fields

    def get_duration_seconds(self, obj: Revision) -> float | None:
        duration = obj.duration
        return None if duration is None else duration.total_seconds()

    def get_error_count(self, obj: Revision) -> int:
        return len(obj.errors) if isinstance(obj.errors, list) else 0

    def get_warning_count(self, obj: Revision) -> int:
        return len(obj.warnings) if isinstance(obj.warnings, list) else 0


class RevisionDetailSerializer(RevisionSerializer):
    """One enrichment run with its errors, warnings and output per node type."""

    # DRF moves declared fields off the class, so the ``errors`` property of
    # serializers stays intact; the stubs cannot know that.
    errors = ProblemSerializer(many=True, read_only=True)  # type: ignore[assignment]
    warnings = ProblemSerializer(many=True, read_only=True)
    outputs = OutputSerializer(many=True, read_only=True)
    deleted_keys = serializers.ListField(child=serializers.CharField(), read_only=True)

    class Meta(RevisionSerializer.Meta):
        fields = [
            *RevisionSerializer.Meta.fields,
            "failure",
            "errors",
            "warnings",
            "outputs",
            "deleted_keys",
        ]
        read_only_fields = fields


class RunRequestSerializer(serializers.Serializer[dict[str, Any]]):
    """What to enrich: a commit, or the head of a branch when no SHA is given."""

    ref = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=255,
        help_text="branch to run; default: the repository's branch",
    )
    commit_sha = serializers.CharField(
        required=False,
        allow_blank=True,
        help_text="full 40-character SHA; default: the head of ref when run",
    )

    def validate_ref(self, value: str) -> str:
        return validators.branch_name(value) if value else ""

    def validate_commit_sha(self, value: str) -> str:
        return validators.commit_sha(value) if value else ""


class RevisionCreateSerializer(RunRequestSerializer):
    """A run request naming its repository."""

    repository = serializers.PrimaryKeyRelatedField(
        queryset=ConfigRepository.objects.all()
    )
