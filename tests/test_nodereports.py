"""Storing reports: the one-UPDATE path for unchanged states, and transitions.

A report whose services' states and health match the stored ones is written by
one conditional UPDATE; any change, a first report, or a node whose digest is
stale takes the locking path that compares with the previous report.
"""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from controlplane.models import Node, NodeTransition
from controlplane.nodereports import (
    HISTORY_LIMIT,
    changes_between,
    ingest,
    states_digest,
)
from controlplane.nodetokens import issue_node_token, node_token_for
from tests.nodereportdata import report, service


@pytest.fixture
def node(db: None) -> Node:
    return Node.objects.create(name="node-a", labels=["general-purpose"])


def with_health(status: str) -> dict[str, Any]:
    return report(services=[service("web", health={"status": status})])


def test_the_digest_covers_exactly_what_transitions_compare():
    base = report()
    moved = report(services=[service("web", state="failed"), *base["services"][1:]])
    sick = report(
        services=[service("web", health={"status": "unhealthy"}), *base["services"][1:]]
    )
    reordered = report(services=base["services"][::-1])
    other_fields = report(
        time="2026-02-06T00:00:00Z",
        services=[service("web", pid=1, restarts=3), *base["services"][1:]],
    )

    assert states_digest(moved) != states_digest(base)
    assert states_digest(sick) != states_digest(base)
    assert states_digest(report(services=base["services"][:2])) != states_digest(base)
    assert states_digest(reordered) == states_digest(base)
    assert states_digest(other_fields) == states_digest(base)
    assert changes_between(base, other_fields) == []


def test_a_first_report_is_the_baseline_and_sets_the_digest(node: Node):
    changes = ingest(node, report(), timezone.now())

    stored = Node.objects.get()
    assert changes == []
    assert stored.states_digest == states_digest(report())
    assert stored.last_report == report()
    assert not NodeTransition.objects.exists()


def test_an_unchanged_report_is_one_update(node: Node):
    first = timezone.now()
    ingest(node, report(), first)
    later = first + timedelta(seconds=30)
    token = node_token_for(issue_node_token(node))
    assert token is not None
    newer = report(time="2026-02-05T12:00:30Z", agent_version="0.5.0")

    with CaptureQueriesContext(connection) as queries:
        changes = ingest(token.node, newer, later)

    assert changes == []
    assert len(queries) == 1
    assert queries[0]["sql"].lstrip().upper().startswith("UPDATE")
    stored = Node.objects.get()
    assert stored.last_report == newer
    assert stored.last_seen_at == stored.last_report_at == later
    assert stored.agent_version == "0.5.0"


def test_a_changed_report_records_transitions_and_the_new_digest(node: Node):
    ingest(node, with_health("healthy"), timezone.now())
    node.refresh_from_db()

    changes = ingest(node, with_health("unhealthy"), timezone.now())

    assert [(c.service, c.field, c.old, c.new) for c in changes] == [
        ("web", "health", "healthy", "unhealthy")
    ]
    stored = Node.objects.get()
    assert stored.states_digest == states_digest(with_health("unhealthy"))
    change = NodeTransition.objects.get()
    assert (change.old_value, change.new_value) == ("healthy", "unhealthy")


def test_a_stale_digest_in_hand_takes_the_locking_path(node: Node):
    # Another report changed the states after this one read the node.
    ingest(node, with_health("healthy"), timezone.now())
    node.refresh_from_db()
    in_hand = copy.copy(node)
    ingest(node, with_health("unhealthy"), timezone.now())

    changes = ingest(in_hand, with_health("healthy"), timezone.now())

    assert [(c.old, c.new) for c in changes] == [("unhealthy", "healthy")]
    assert NodeTransition.objects.count() == 2
    assert Node.objects.get().states_digest == states_digest(with_health("healthy"))


def test_a_report_stored_before_digests_is_compared_in_full(node: Node):
    Node.objects.filter(pk=node.pk).update(last_report=with_health("healthy"))
    node.refresh_from_db()
    assert node.states_digest == ""

    changes = ingest(node, with_health("unknown"), timezone.now())

    assert [(c.old, c.new) for c in changes] == [("healthy", "unknown")]


def test_unchanged_reports_leave_the_history_alone(node: Node):
    ingest(node, with_health("healthy"), timezone.now())
    NodeTransition.objects.bulk_create(
        NodeTransition(node=node, service="old", field="state", new_value="x")
        for _ in range(HISTORY_LIMIT + 5)
    )
    node.refresh_from_db()

    ingest(node, with_health("healthy"), timezone.now())
    kept_unchanged = NodeTransition.objects.count()
    ingest(node, with_health("unhealthy"), timezone.now())

    assert kept_unchanged == HISTORY_LIMIT + 5
    assert NodeTransition.objects.count() == HISTORY_LIMIT
