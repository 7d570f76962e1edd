"""The Django project of the Firework control plane."""

from __future__ import annotations

# Loaded with the project so that @shared_task binds to our app in every process.
from firework_site.celery import app as celery_app

__all__ = ["celery_app"]
