"""Storing what a node reports, and the history of its services' changes.

Each report replaces the node's latest one. Against the previous report, every
change of a service's state or health status becomes a :class:`NodeTransition`;
a node keeps only its newest :data:`HISTORY_LIMIT` of them.

Most reports change nothing of that: the node row keeps a digest of it
(:func:`states_digest`), and a report with the same digest is stored by one
conditional UPDATE, without reading the previous report or locking the row.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connections, models, router, transaction

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


def states_digest(report: Mapping[str, Any]) -> str:
    """A hash of exactly what :func:`changes_between` compares in ``report``."""
    values = _service_values(report)
    rows = [
        [name, fields[NodeTransition.Field.STATE], fields[NodeTransition.Field.HEALTH]]
        for name, fields in sorted(values.items())
    ]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def ingest(node: Node, report: dict[str, Any], now: datetime) -> list[Change]:
    """Store ``report`` as the node's latest and record what changed since.

    ``node`` needs only its primary key, name and ``states_digest`` loaded.
    """
    digest = states_digest(report)
    if digest == node.states_digest and _store_unchanged(node, report, digest, now):
        log.info("node report stored node=%s changes=0", node.name)
        return []
    return _store_with_changes(node, report, digest, now)


def _stored_fields(report: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The node's fields a report sets (:data:`_STORED`), with their values."""
    return {
        "last_report": report,
        "last_report_at": now,
        "last_seen_at": now,
        "agent_version": str(report.get("agent_version") or ""),
    }


def _store_unchanged(
    node: Node, report: dict[str, Any], digest: str, now: datetime
) -> bool:
    """Store a report whose states match the stored ones; ``False`` if they moved.

    The digest in the WHERE clause makes it safe against a concurrent report
    that changed the states since ``node`` was read: no row is updated then,
    and the caller takes the locking path. This runs for nearly every report,
    so it is one UPDATE written out; a queryset's compilation cost more CPU
    than the statement.
    """
    alias = router.db_for_write(Node)
    conn = connections[alias]
    fields = _stored_fields(report, now)
    values = [_field(name).get_db_prep_save(fields[name], conn) for name in _STORED]
    with conn.cursor() as cursor:
        cursor.execute(_update_sql(alias), [*values, node.pk, digest])
        updated: int = cursor.rowcount
    return updated == 1


def _field(name: str) -> models.Field[Any, Any]:
    field = Node._meta.get_field(name)
    assert isinstance(field, models.Field)  # a column of Node, not a relation
    return field


@functools.cache
def _update_sql(alias: str) -> str:
    """``UPDATE`` of the stored fields where the id and the states digest match."""
    quote = connections[alias].ops.quote_name
    columns = [quote(_field(name).column) for name in _STORED]
    return _UPDATE_SQL.format(
        table=quote(Node._meta.db_table),
        assignments=", ".join(f"{column} = %s" for column in columns),
        node_id=quote(_field("id").column),
        states_digest=quote(_field("states_digest").column),
    )


_STORED = ("last_report", "last_report_at", "last_seen_at", "agent_version")
_UPDATE_SQL = (
    "UPDATE {table} SET {assignments} WHERE {node_id} = %s AND {states_digest} = %s"
)


def _store_with_changes(
    node: Node, report: dict[str, Any], digest: str, now: datetime
) -> list[Change]:
    with transaction.atomic():
        locked = (
            Node.objects.select_for_update().only("name", "last_report").get(pk=node.pk)
        )
        changes = changes_between(locked.last_report, report)
        NodeTransition.objects.bulk_create(
            NodeTransition(
                node=locked,
                service=c.service,
                field=c.field,
                old_value=c.old,
                new_value=c.new,
                at=now,
            )
            for c in changes
        )
        fields = _stored_fields(report, now) | {"states_digest": digest}
        Node.objects.filter(pk=locked.pk).update(**fields)
        if changes:
            trim_history(locked)
    log.info("node report stored node=%s changes=%s", locked.name, len(changes))
    return changes


def trim_history(node: Node, keep: int = HISTORY_LIMIT) -> int:
    """Delete all but the newest ``keep`` transitions of ``node``.

    One DELETE: the id of the newest one beyond ``keep`` is a subquery, and
    when there is none the condition matches nothing. It runs after every
    report that added transitions, so it is written out like the UPDATE above.
    """
    alias = router.db_for_write(NodeTransition)
    with connections[alias].cursor() as cursor:
        cursor.execute(_trim_sql(alias), [node.pk, node.pk, keep])
        deleted: int = cursor.rowcount
    return deleted


@functools.cache
def _trim_sql(alias: str) -> str:
    quote = connections[alias].ops.quote_name
    meta = NodeTransition._meta
    return _TRIM_SQL.format(
        table=quote(meta.db_table),
        id=quote(meta.pk.column),
        node_id=quote(meta.get_field("node").column),
    )


_TRIM_SQL = """
DELETE FROM {table} WHERE {node_id} = %s AND {id} <= (
    SELECT {id} FROM {table} WHERE {node_id} = %s ORDER BY {id} DESC
    LIMIT 1 OFFSET %s
)
"""
