"""Storing what a node reports, and the history of its services' changes.

Each report replaces the node's latest one. Against the previous report, every
change of a service's state or health status becomes a :class:`NodeTransition`;
a node keeps only its newest :data:`HISTORY_LIMIT` of them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction

from controlplane.models import Node, NodeTransition

log = logging.getLogger(__name__)

HISTORY_LIMIT = 500


@dataclass(frozen=True)
class Change:
    """One service field that differs between two reports."""

    service: str
    field: str
    old: str
    new: str


def _service_values(report: Mapping[str, Any] | None) -> dict[str, dict[str, str]]:
    """Per service name: its state and health status ("" when not given)."""
    values: dict[str, dict[str, str]] = {}
    services = report.get("services") if report else None
    for service in services if isinstance(services, list) else []:
        if not isinstance(service, Mapping) or "name" not in service:
            continue
        health = service.get("health")
        status = health.get("status") if isinstance(health, Mapping) else None
        values[str(service["name"])] = {
            NodeTransition.Field.STATE: str(service.get("state") or ""),
            NodeTransition.Field.HEALTH: str(status or ""),
        }
    return values


def changes_between(
    old: Mapping[str, Any] | None, new: Mapping[str, Any]
) -> list[Change]:
    """What changed from ``old`` to ``new``; nothing when there is no ``old``.

    The first report is the baseline. After it, a service that appears changes
    from "" and one that disappears changes to "".
    """
    if old is None:
        return []
    before, after = _service_values(old), _service_values(new)
    changes = []
    for name in sorted(before.keys() | after.keys()):
        was, now = before.get(name, {}), after.get(name, {})
        for field in NodeTransition.Field:
            if was.get(field, "") != now.get(field, ""):
                changes.append(
                    Change(name, field.value, was.get(field, ""), now.get(field, ""))
                )
    return changes


def ingest(node: Node, report: dict[str, Any], now: datetime) -> list[Change]:
    """Store ``report`` as the node's latest and record what changed since."""
    with transaction.atomic():
        node = Node.objects.select_for_update().get(pk=node.pk)
        changes = changes_between(node.last_report, report)
        NodeTransition.objects.bulk_create(
            NodeTransition(
                node=node,
                service=c.service,
                field=c.field,
                old_value=c.old,
                new_value=c.new,
                at=now,
            )
            for c in changes
        )
        node.last_report = report
        node.last_report_at = now
        node.last_seen_at = now
        node.agent_version = str(report.get("agent_version") or "")
        node.save(
            update_fields=[
                "last_report",
                "last_report_at",
                "last_seen_at",
                "agent_version",
            ]
        )
        if changes:
            trim_history(node)
    log.info("node report stored node=%s changes=%s", node.name, len(changes))
    return changes


def trim_history(node: Node, keep: int = HISTORY_LIMIT) -> int:
    """Delete all but the newest ``keep`` transitions of ``node``."""
    newest = NodeTransition.objects.filter(node=node).order_by("-id")
    cutoff = list(newest.values_list("id", flat=True)[keep : keep + 1])
    if not cutoff:
        return 0
    deleted, _ = NodeTransition.objects.filter(node=node, id__lte=cutoff[0]).delete()
    return deleted
