"""URL routes of the controlplane app."""

from __future__ import annotations

from django.urls import URLPattern, path

from controlplane import views

app_name = "controlplane"

urlpatterns: list[URLPattern] = [
    path("", views.index, name="index"),
    path("healthz", views.healthz, name="healthz"),
]
