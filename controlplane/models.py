"""Database models of the control plane: repositories, runs, deliveries, nodes.

Published node configs live in the object store; the database keeps the record of
every run (revision) and of what it published, so any revision can be inspected,
compared with the previous one and re-run.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from controlplane.envvars import env_secret

_ENV_NAME = RegexValidator(
    r"^[A-Z_][A-Z0-9_]*$", "an environment variable name like FIREWORK_OPS_SECRET"
)
_SHA = RegexValidator(r"^[0-9a-f]{40}$", "a full 40-character commit SHA")


class ConfigRepository(models.Model):
    """A Git repository of service specs that the control plane enriches.

    Secrets are never stored: the webhook secret and the access token are named
    by environment variable (``NAME`` or ``NAME_FILE`` is read when needed).
    """

    name = models.SlugField(max_length=100, unique=True)
    clone_url = models.CharField(max_length=1000)
    github_full_name = models.CharField(
        max_length=255,
        blank=True,
        help_text="owner/name as GitHub sends it in webhook payloads",
    )
    branch = models.CharField(max_length=255, default="main")
    config_subdir = models.CharField(
        max_length=255, blank=True, help_text="directory of the specs in the repo"
    )
    webhook_secret_env = models.CharField(
        max_length=100, blank=True, validators=[_ENV_NAME]
    )
    access_token_env = models.CharField(
        max_length=100, blank=True, validators=[_ENV_NAME]
    )
    active = models.BooleanField(default=True)
    allow_empty = models.BooleanField(
        default=False, help_text="publish a run without services (deletes all)"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "config repositories"

    def __str__(self) -> str:
        return self.name

    def webhook_secret(self) -> str:
        """The webhook secret from the environment; empty when none is set."""
        return env_secret(self.webhook_secret_env) if self.webhook_secret_env else ""

    def access_token(self) -> str:
        """The Git access token from the environment; empty when none is set."""
        return env_secret(self.access_token_env) if self.access_token_env else ""


class Revision(models.Model):
    """One enrichment run of a repository at one commit, and all it produced."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        SUPERSEDED = "superseded"

    class Trigger(models.TextChoices):
        WEBHOOK = "webhook"
        MANUAL = "manual"
        API = "api"
        # Run again because the repository that held a node type let it go.
        HANDOVER = "handover"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.SUPERSEDED)

    repository = models.ForeignKey(
        ConfigRepository, on_delete=models.CASCADE, related_name="revisions"
    )
    ref = models.CharField(max_length=255, help_text="branch the run was asked for")
    commit_sha = models.CharField(
        max_length=40, blank=True, validators=[_SHA], help_text="empty until resolved"
    )
    trigger = models.CharField(max_length=16, choices=Trigger.choices)
    delivery_id = models.CharField(max_length=100, blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True
    )
    queued_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    errors = models.JSONField(default=list, blank=True)  # [{file, service, message}]
    warnings = models.JSONField(default=list, blank=True)
    failure = models.TextField(
        blank=True, help_text="why the run failed, when not a validation error"
    )
    published = models.BooleanField(default=False)
    deleted_keys = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-queued_at", "-id"]
        indexes = [models.Index(fields=["repository", "status"])]

    def __str__(self) -> str:
        return f"{self.repository} {self.commit_sha[:12] or self.ref} ({self.status})"

    @property
    def duration(self) -> timedelta | None:
        """How long the run took, once it started and finished."""
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    @property
    def finished(self) -> bool:
        return self.status in self.FINISHED


class NodeConfigOutput(models.Model):
    """The node config a revision produced for one node type, and where it went."""

    revision = models.ForeignKey(
        Revision, on_delete=models.CASCADE, related_name="outputs"
    )
    node_type = models.CharField(max_length=253)
    content = models.TextField()
    sha256 = models.CharField(max_length=64)
    object_key = models.CharField(max_length=1024, blank=True)
    etag = models.CharField(max_length=200, blank=True)
    services = models.JSONField(default=list, blank=True)  # service names

    class Meta:
        ordering = ["node_type"]
        constraints = [
            models.UniqueConstraint(
                fields=["revision", "node_type"], name="one_output_per_node_type"
            )
        ]

    def __str__(self) -> str:
        return f"{self.revision_id}:{self.node_type}"


class WebhookDelivery(models.Model):
    """Every request to the GitHub webhook, accepted or not, and what came of it."""

    delivery_id = models.CharField(max_length=100, blank=True)
    event = models.CharField(max_length=64, blank=True)
    repository = models.ForeignKey(
        ConfigRepository, null=True, blank=True, on_delete=models.SET_NULL
    )
    received_at = models.DateTimeField(auto_now_add=True, db_index=True)
    status_code = models.PositiveSmallIntegerField()
    accepted = models.BooleanField(default=False)
    outcome = models.CharField(max_length=300)
    revision = models.ForeignKey(
        Revision, null=True, blank=True, on_delete=models.SET_NULL
    )
    body_bytes = models.PositiveIntegerField(default=0)
    remote_addr = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        ordering = ["-received_at", "-id"]
        verbose_name_plural = "webhook deliveries"
        constraints = [
            # a delivery GitHub sends again is recognised; refused ones may retry
            models.UniqueConstraint(
                fields=["delivery_id"],
                condition=Q(accepted=True) & ~Q(delivery_id=""),
                name="accepted_delivery_once",
            )
        ]

    def __str__(self) -> str:
        return f"{self.event or '?'} {self.delivery_id or '-'} -> {self.status_code}"


_DNS_LABEL = RegexValidator(
    r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
    "a DNS label: lowercase letters, digits and '-'",
)


def _enrollment_expiry() -> datetime:
    return timezone.now() + ENROLLMENT_TOKEN_LIFETIME


ENROLLMENT_TOKEN_LIFETIME = timedelta(hours=24)


class Node(models.Model):
    """A host running the node agent, and the latest status it reported."""

    name = models.CharField(max_length=63, unique=True, validators=[_DNS_LABEL])
    labels = models.JSONField(
        default=list, blank=True, help_text="node types this node runs"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    last_report = models.JSONField(null=True, blank=True)
    last_report_at = models.DateTimeField(null=True, blank=True)
    agent_version = models.CharField(max_length=100, blank=True)
    # What the transitions compare (each service's state and health status) in
    # the latest report, hashed: an unchanged report is then stored without
    # reading the previous one. Written only with last_report, by ingest.
    states_digest = models.CharField(max_length=64, blank=True, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class NodeToken(models.Model):
    """A node's credential for the API; only the SHA-256 of the token is kept."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="tokens")
    token_sha256 = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.node} token {self.token_sha256[:8]}"


class EnrollmentToken(models.Model):
    """A one-time token a node exchanges for its :class:`NodeToken`."""

    node = models.ForeignKey(
        Node, on_delete=models.CASCADE, related_name="enrollment_tokens"
    )
    token_sha256 = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(default=_enrollment_expiry)
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.node} enrollment {self.token_sha256[:8]}"


class NodeTransition(models.Model):
    """A change of one service's state or health between two reports of a node."""

    class Field(models.TextChoices):
        STATE = "state"
        HEALTH = "health"

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="transitions")
    service = models.CharField(max_length=63)
    field = models.CharField(max_length=16, choices=Field.choices)
    old_value = models.CharField(max_length=32, blank=True)
    new_value = models.CharField(max_length=32, blank=True)
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["node", "-id"])]

    def __str__(self) -> str:
        change = f"{self.old_value or '-'} -> {self.new_value or '-'}"
        return f"{self.node} {self.service} {self.field}: {change}"
