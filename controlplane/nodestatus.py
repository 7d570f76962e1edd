"""Desired against actual state, per node and per service.

The desired state of a node is the node configs published for its node types
(labels), read from the object store as agents read them; the actual state is
the node's latest report. :func:`derive` compares the two without touching the
database or the store, so every rule is a plain function of its inputs;
:func:`node_views` and :func:`node_view` load those inputs and call it.

A node that has not reported for :data:`MISSED_HEARTBEATS` heartbeats
(``settings.FIREWORK_NODE_HEARTBEAT_SECONDS``, 30 when unset) is ``stale``, one
that never reported is ``unknown``; their services are all ``unknown``, since
an old report says nothing about what runs now.

An agent names the config it applied by the store's revision string: the ETag
without quotes (S3), the content's SHA-256 (a local directory) or a commit SHA
(Git). The first two are checked against the published object; a Git store is a
repository the control plane does not publish to, so its commit matches only if
it is the commit of the revision that published the config. Any other Git
commit counts as drift (listed in ``docs/limitations.md``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, get_args

from django.conf import settings
from django.utils import timezone

from controlplane.models import Node
from controlplane.objectstore import ObjectStoreError
from controlplane.publishedlabels import PublishedLabel as PublishedLabel  # re-export
from controlplane.publishedlabels import (
    applied_history,
    load_published,
    open_store,
    report_revisions,
)

log = logging.getLogger(__name__)

NodeState = Literal["converged", "drifted", "stale", "unknown"]
ServiceStatus = Literal[
    "ok", "missing", "unexpected", "unhealthy", "failed", "starting", "unknown"
]
SERVICE_STATUSES: tuple[ServiceStatus, ...] = get_args(ServiceStatus)
NODE_STATES: tuple[NodeState, ...] = get_args(NodeState)

DEFAULT_HEARTBEAT_SECONDS = 30
MISSED_HEARTBEATS = 3
_FAILED_STATES = frozenset({"failed", "crashloop"})


@dataclass(frozen=True)
class ServiceView:
    """One service of one node: what should run, what runs, and the verdict."""

    name: str
    status: ServiceStatus
    reason: str
    desired: dict[str, Any] | None
    actual: dict[str, Any] | None
    node_type: str = ""  # the label that publishes it; "" if unexpected


@dataclass(frozen=True)
class NodeView:
    """One node's desired state against its latest report."""

    name: str
    labels: list[str]
    status: NodeState
    reasons: list[str]
    last_seen_at: datetime | None
    applied: dict[str, str]
    published: dict[str, str]
    published_commits: dict[str, str]
    services: list[ServiceView]
    counts: dict[str, int]
    applied_commits: dict[str, str] = field(default_factory=dict)


def heartbeat() -> timedelta:
    """How often agents report: ``FIREWORK_NODE_HEARTBEAT_SECONDS`` (default 30)."""
    seconds = getattr(
        settings, "FIREWORK_NODE_HEARTBEAT_SECONDS", DEFAULT_HEARTBEAT_SECONDS
    )
    return timedelta(seconds=float(seconds))


# --- the pure part ---------------------------------------------------------


def derive(
    node: Node,
    published: Mapping[str, PublishedLabel],
    now: datetime,
    heartbeat: timedelta,
    *,
    history: Mapping[tuple[str, str], str] | None = None,
    store_error: str = "",
) -> NodeView:
    """Compare ``node``'s latest report with what is ``published`` for its labels.

    ``history`` maps (node type, revision string) of earlier publishes to their
    commit, to say which commit a node still runs; ``store_error`` says why the
    published configs could not be read (the node is then ``unknown``).
    """
    report = node.last_report if isinstance(node.last_report, dict) else None
    labels = [str(label) for label in node.labels or []]
    applied = report_revisions(report)
    desired = desired_services(labels, published)
    actual = _actual(report)
    silence = _silence(node, report, now, heartbeat)
    if silence is not None or store_error:
        reasons = [silence] if silence else []
        if store_error:
            reasons.append(f"published node configs could not be read: {store_error}")
        state: NodeState = "stale" if report and not store_error else "unknown"
        services = _all_unknown(desired, actual, reasons[0])
        return _view(node, state, reasons, services, applied, published, history)
    reasons = _label_reasons(labels, applied, published)
    if report and report.get("stale"):
        why = report.get("stale_reason") or "no reason given"
        reasons.append(f"agent reports its config stale: {why}")
    invalid = [
        label for label in labels if label in published and published[label].errors
    ]
    unsure = f"node type {invalid[0]}: published config is invalid" if invalid else ""
    services = _compare_services(desired, actual, unsure)
    reasons.extend(f"service {s.name}: {s.reason}" for s in services if s.reason)
    status: NodeState = "drifted" if reasons else "converged"
    return _view(node, status, reasons, services, applied, published, history)


def _view(
    node: Node,
    status: NodeState,
    reasons: list[str],
    services: list[ServiceView],
    applied: dict[str, str],
    published: Mapping[str, PublishedLabel],
    history: Mapping[tuple[str, str], str] | None,
) -> NodeView:
    labels = [str(label) for label in node.labels or []]
    shown = {label: published[label] for label in labels if label in published}
    return NodeView(
        name=node.name,
        labels=labels,
        status=status,
        reasons=reasons,
        last_seen_at=node.last_seen_at,
        applied=applied,
        published={
            label: config.revision_like(applied.get(label, ""))
            for label, config in shown.items()
        },
        published_commits={label: config.commit for label, config in shown.items()},
        services=services,
        counts=count_statuses(services),
        applied_commits=_applied_commits(applied, published, history or {}),
    )


def count_statuses(services: Iterable[ServiceView]) -> dict[str, int]:
    """How many services have each status, every status present (maybe 0)."""
    counts: dict[str, int] = dict.fromkeys(SERVICE_STATUSES, 0)
    for service in services:
        counts[service.status] += 1
    return counts


def _applied_commits(
    applied: Mapping[str, str],
    published: Mapping[str, PublishedLabel],
    history: Mapping[tuple[str, str], str],
) -> dict[str, str]:
    commits = {}
    for label, rev in applied.items():
        config = published.get(label)
        if config is not None and config.matches(rev) and config.commit:
            commits[label] = config.commit
        else:
            commits[label] = history.get((label, rev.strip('"')), "")
    return commits


def desired_services(
    labels: Iterable[str], published: Mapping[str, PublishedLabel]
) -> dict[str, tuple[str, dict[str, Any]]]:
    """Service name -> (node type, service entry); the last label wins a clash.

    That is how the agent merges its labels' configs (``nodeagent.stores.desired``).
    """
    desired: dict[str, tuple[str, dict[str, Any]]] = {}
    for label in labels:
        config = published.get(label)
        for name, entry in (config.services if config else {}).items():
            desired[name] = (label, entry)
    return desired


def _actual(report: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    services = report.get("services") if report else None
    return {
        str(entry["name"]): dict(entry)
        for entry in (services if isinstance(services, list) else [])
        if isinstance(entry, Mapping) and "name" in entry
    }


def _silence(
    node: Node, report: Mapping[str, Any] | None, now: datetime, beat: timedelta
) -> str | None:
    """Why the node's report cannot be trusted now, or None if it is fresh."""
    if report is None or node.last_report_at is None:
        return "the node has never reported"
    quiet = now - node.last_report_at
    if quiet > beat * MISSED_HEARTBEATS:
        missed = f"more than {MISSED_HEARTBEATS} heartbeats"
        return f"no report for {_duration(quiet)} ({missed})"
    return None


def _duration(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def _all_unknown(
    desired: Mapping[str, tuple[str, dict[str, Any]]],
    actual: Mapping[str, dict[str, Any]],
    reason: str,
) -> list[ServiceView]:
    return [
        ServiceView(
            name=name,
            status="unknown",
            reason=reason,
            desired=desired[name][1] if name in desired else None,
            actual=actual.get(name),
            node_type=desired[name][0] if name in desired else "",
        )
        for name in sorted(desired.keys() | actual.keys())
    ]


def _label_reasons(
    labels: list[str],
    applied: Mapping[str, str],
    published: Mapping[str, PublishedLabel],
) -> list[str]:
    reasons = []
    for label in labels:
        config = published.get(label)
        rev = applied.get(label, "")
        if config is None:
            reasons.append(f"node type {label} is not published")
        elif config.errors:
            reasons.append(f"node type {label}: published config is invalid")
        elif not rev:
            reasons.append(f"node type {label}: no applied revision reported")
        elif not config.matches(rev):
            want = config.revision_like(rev)
            reasons.append(
                f"node type {label}: runs revision {rev[:12]}, published {want[:12]}"
            )
    return reasons


def _compare_services(
    desired: Mapping[str, tuple[str, dict[str, Any]]],
    actual: Mapping[str, dict[str, Any]],
    unsure: str = "",
) -> list[ServiceView]:
    """Each service's verdict; ``unsure`` says why an undesired one may be wanted."""
    views = []
    for name in sorted(desired.keys() | actual.keys()):
        label, entry = desired.get(name, ("", None))
        status, reason = service_status(entry, actual.get(name))
        if status == "unexpected" and unsure:
            # its node type's config cannot be read: it may well belong there
            status, reason = "unknown", unsure
        views.append(
            ServiceView(name, status, reason, entry, actual.get(name), node_type=label)
        )
    return views


def service_status(
    desired: Mapping[str, Any] | None, actual: Mapping[str, Any] | None
) -> tuple[ServiceStatus, str]:
    """The verdict on one service of a fresh report, and the reason ("" if ok)."""
    if actual is None:
        return "missing", "not running on the node"
    state = str(actual.get("state") or "")
    if desired is None:
        return "unexpected", f"{state or 'reported'} on the node but not published"
    last_error = str(actual.get("last_error") or "")
    if state in _FAILED_STATES:
        return "failed", _with_detail(f"state {state}", last_error)
    if state == "starting":
        return "starting", "starting"
    if state != "running":
        return "failed", _with_detail(f"state {state or 'not reported'}", last_error)
    health = actual.get("health")
    health = health if isinstance(health, Mapping) else {}
    if health.get("status") == "unhealthy":
        return "unhealthy", _with_detail(
            "health unhealthy", str(health.get("last_error") or "")
        )
    return "ok", ""


def _with_detail(text: str, detail: str) -> str:
    return f"{text}: {detail}" if detail else text


# --- loading the inputs ----------------------------------------------------


def node_views(now: datetime | None = None) -> list[NodeView]:
    """Every node, sorted by name, against the configs published right now."""
    return views_for(Node.objects.order_by("name"), now)


def node_view(name: str, now: datetime | None = None) -> NodeView:
    """One node; raises ``Node.DoesNotExist`` if there is none of that name."""
    return views_for([Node.objects.get(name=name)], now)[0]


def views_for(nodes: Iterable[Node], now: datetime | None = None) -> list[NodeView]:
    """:func:`derive` for ``nodes``, reading each published label once."""
    nodes = list(nodes)
    labels = {str(label) for node in nodes for label in node.labels or []}
    store_error = ""
    try:
        published = load_published(open_store(), labels)
    except ObjectStoreError as exc:
        log.warning("reading published node configs failed error=%s", exc)
        published, store_error = {}, str(exc)
    history = applied_history(nodes)
    moment = now or timezone.now()
    beat = heartbeat()
    return [
        derive(node, published, moment, beat, history=history, store_error=store_error)
        for node in nodes
    ]
