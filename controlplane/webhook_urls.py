"""URL routes of the webhooks, mounted under ``/webhooks/``."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, path

from controlplane.webhook import github_webhook

urlpatterns: list[URLPattern | URLResolver] = [
    path("github/", github_webhook, name="github-webhook"),
]
