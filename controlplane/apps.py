"""The control plane's Django app."""

from __future__ import annotations

from django.apps import AppConfig


class ControlplaneConfig(AppConfig):
    """Enrichment, publishing, webhook, API and dashboard of Firework."""

    name = "controlplane"
    verbose_name = "Firework control plane"
    default_auto_field = "django.db.models.BigAutoField"
