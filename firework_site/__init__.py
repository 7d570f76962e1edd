"""The Django project of the Firework control plane."""

from __future__ import annotations

from importlib.util import find_spec

__all__ = ["celery_app"]

# Loaded with the project so that @shared_task binds to our app in every process.
if find_spec("celery") is not None:
    from firework_site.celery import app as celery_app
