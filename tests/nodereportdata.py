"""Agent status reports as tests post them: one realistic body, parts overridable."""

from __future__ import annotations

from typing import Any


def service(name: str = "web", **extra: Any) -> dict[str, Any]:
    """One service entry of a report, running and healthy."""
    body = {
        "name": name,
        "state": "running",
        "pid": 4242,
        "health": {
            "status": "healthy",
            "last_checked": "2026-02-05T12:00:00Z",
            "failures": 0,
            "last_error": "",
        },
        "guest_ip": "172.16.0.2",
        "restarts": 0,
        "last_error": "",
        "next_restart_at": None,
    }
    return body | extra


def report(**extra: Any) -> dict[str, Any]:
    """A whole report of three services; ``extra`` replaces top-level keys."""
    body = {
        "node": "general-purpose",
        "last_revision": "abc123",
        "services": [service("web"), service("api"), service("db")],
        "phase": "running",
        "labels": ["general-purpose"],
        "revisions": {"general-purpose": "abc123"},
        "stale": False,
        "stale_reason": "",
        "stale_since": None,
        "time": "2026-02-05T12:00:00Z",
        "agent_version": "0.4.0",
        "host": {"kernel": "6.1.0", "cpus": 8, "load": 0.5, "kvm": True},
    }
    return body | extra
