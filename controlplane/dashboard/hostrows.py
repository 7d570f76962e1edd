"""How the node pages word desired and actual state: one plain row per service.

The node status module compares a node's report with what is published; these
helpers only turn its dictionaries (published service entries, the agent's
report entries) into short texts, so the templates need no logic of their own.
Entries come from agents and from hand-written configs, so every field is read
defensively: a missing or odd value shows as empty, never as an error page.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from controlplane.dashboard.present import short_sha

if TYPE_CHECKING:
    from controlplane.nodestatus import NodeView, ServiceView

# The service statuses the node list counts; the others show on the detail.
_COUNTED = ("ok", "unhealthy", "failed", "missing")


@dataclass(frozen=True)
class RevisionPair:
    """A label's applied revision next to the published one (short forms)."""

    label: str
    applied: str
    published: str
    commit: str  # short SHA of the commit that published it; "" if unknown
    full_applied: str = ""
    full_published: str = ""
    applied_commit: str = ""  # short SHA of the commit the node runs, if known

    @property
    def matches(self) -> bool:
        """True when the node runs exactly what is published for the label."""
        return bool(self.published) and self.applied == self.published

    @property
    def empty(self) -> bool:
        """Nothing published for the label and nothing applied: nothing differs."""
        return not self.published and not self.applied


@dataclass(frozen=True)
class Desired:
    """A published service entry, worded."""

    image: str = ""
    vcpus: str = ""
    memory: str = ""
    ports: list[str] = field(default_factory=list)
    health_check: str = ""


@dataclass(frozen=True)
class Actual:
    """An agent's report entry for a service, worded."""

    state: str = ""
    pid: str = ""
    guest_ip: str = ""
    health: str = ""
    health_error: str = ""
    last_error: str = ""
    restarts: int = 0
    next_restart_at: datetime | None = None
    health_checked_at: datetime | None = None


@dataclass(frozen=True)
class ServiceRow:
    """One service of a node: its status, what is published and what runs."""

    view: ServiceView
    desired: Desired | None
    actual: Actual | None


def _text(value: object) -> str:
    if value is None or isinstance(value, (dict, list)):
        return ""
    return str(value)


def parse_time(value: object) -> datetime | None:
    """An RFC 3339 time from a report (``2026-02-05T12:00:00Z``), else None."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def revision_pairs(view: NodeView) -> list[RevisionPair]:
    """Applied against published, for every label the node has or reports."""
    labels = list(view.labels)
    labels += sorted((view.applied.keys() | view.published.keys()) - set(labels))
    return [
        RevisionPair(
            label=label,
            applied=short_sha(view.applied.get(label, "")),
            published=short_sha(view.published.get(label, "")),
            commit=short_sha(view.published_commits.get(label, "")),
            full_applied=view.applied.get(label, ""),
            full_published=view.published.get(label, ""),
            applied_commit=short_sha(view.applied_commits.get(label, "")),
        )
        for label in labels
    ]


def port_texts(forwards: object) -> list[str]:
    """``8080 → 80`` for each port forward (``/udp`` when not TCP)."""
    texts = []
    for forward in forwards if isinstance(forwards, list) else []:
        if not isinstance(forward, Mapping):
            continue
        text = f"{_text(forward.get('host_port'))} → {_text(forward.get('vm_port'))}"
        protocol = _text(forward.get("protocol"))
        texts.append(f"{text}/{protocol}" if protocol not in ("", "tcp") else text)
    return texts


def health_check_text(check: object) -> str:
    """``http :80/healthz every 10s`` for a published health check; "" for none."""
    if not isinstance(check, Mapping):
        return ""
    target = f":{_text(check.get('port'))}{_text(check.get('path'))}"
    text = f"{_text(check.get('type')) or 'check'} {target}"
    details = [
        f"{name} {_text(check.get(key))}"
        for name, key in (("every", "interval"), ("timeout", "timeout"))
        if _text(check.get(key))
    ]
    if _text(check.get("retries")):
        details.append(f"{_text(check.get('retries'))} retries")
    return ", ".join([f"{text} {details[0]}", *details[1:]]) if details else text


def desired_of(entry: Mapping[str, Any] | None) -> Desired | None:
    """What is published for a service, worded; None when nothing is."""
    if entry is None:
        return None
    memory = _text(entry.get("memory_mb"))
    return Desired(
        image=_text(entry.get("image")),
        vcpus=_text(entry.get("vcpus")),
        memory=f"{memory} MiB" if memory else "",
        ports=port_texts(entry.get("port_forwards")),
        health_check=health_check_text(entry.get("health_check")),
    )


def actual_of(entry: Mapping[str, Any] | None) -> Actual | None:
    """What the agent reported for a service, worded; None when it reported none."""
    if entry is None:
        return None
    health = entry.get("health")
    health = health if isinstance(health, Mapping) else {}
    restarts = entry.get("restarts")
    pid = entry.get("pid")
    state = _text(entry.get("state"))
    if state == "starting" and isinstance(restarts, int) and restarts > 0:
        state = "restarting"  # starting again after a crash or failed checks
    return Actual(
        state=state,
        # Agents report 0 for "no process", as the original did.
        pid=_text(pid) if pid else "",
        guest_ip=_text(entry.get("guest_ip")),
        health=_text(health.get("status")),
        health_error=_text(health.get("last_error")),
        last_error=_text(entry.get("last_error")),
        restarts=restarts if isinstance(restarts, int) else 0,
        next_restart_at=parse_time(entry.get("next_restart_at")),
        health_checked_at=parse_time(health.get("last_checked")),
    )


def service_rows(view: NodeView) -> list[ServiceRow]:
    """The node's services with their desired and actual sides worded."""
    return [
        ServiceRow(service, desired_of(service.desired), actual_of(service.actual))
        for service in view.services
    ]


def counts_of(view: NodeView) -> dict[str, int]:
    """The service counts the node list shows, zero for those not reported."""
    return {status: view.counts.get(status, 0) for status in _COUNTED}


@dataclass(frozen=True)
class Placement:
    """One node running, or supposed to run, a service."""

    node: NodeView
    service: ServiceView
    revisions: list[RevisionPair]


@dataclass(frozen=True)
class ServicePlacements:
    """A service name and every node it is placed on."""

    name: str
    placements: list[Placement]


def placements(views: Iterable[NodeView]) -> list[ServicePlacements]:
    """Per service name (sorted), each node that runs or should run it."""
    by_name: dict[str, list[Placement]] = {}
    for view in views:
        pairs = revision_pairs(view)
        for service in view.services:
            # The label that publishes the service says which revision it runs;
            # an unexpected service belongs to none, so every label is shown.
            own = [pair for pair in pairs if pair.label == service.node_type]
            by_name.setdefault(service.name, []).append(
                Placement(view, service, own or pairs)
            )
    return [
        ServicePlacements(name, sorted(rows, key=lambda row: row.node.name))
        for name, rows in sorted(by_name.items())
    ]
