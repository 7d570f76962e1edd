"""Desired against actual state: every rule of ``controlplane.nodestatus``.

``derive`` is pure, so most tests build unsaved nodes and pass ``now``; the last
ones load published configs from a real local object store and the database.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings

from controlplane.models import ConfigRepository, Node, NodeConfigOutput, Revision
from controlplane.nodestatus import (
    NodeView,
    PublishedLabel,
    derive,
    heartbeat,
    node_view,
    node_views,
    service_status,
)
from controlplane.objectstore import LocalStore, StoredObject, etag_of

NOW = datetime(2026, 2, 5, 12, 0, tzinfo=UTC)
BEAT = timedelta(seconds=30)
GP = "general-purpose"
ETAG = "e" * 32
SHA = "5" * 64
COMMIT = "c" * 40


def desired(name: str) -> dict[str, Any]:
    return {"name": name, "image": f"/var/lib/images/{name}.ext4", "vcpus": 1}


def published(
    label: str = GP, services: tuple[str, ...] = ("api", "web"), **fields: Any
) -> dict[str, PublishedLabel]:
    config = PublishedLabel(
        node_type=label,
        etag=ETAG,
        sha256=SHA,
        commit=COMMIT,
        services={name: desired(name) for name in services},
    )
    return {label: replace(config, **fields)}


def service(
    name: str, state: str = "running", health: str = "healthy", error: str = ""
) -> dict[str, Any]:
    return {
        "name": name,
        "state": state,
        "pid": 4242 if state == "running" else 0,
        "health": {"status": health, "failures": 0, "last_error": error},
        "guest_ip": "",
        "restarts": 0,
        "last_error": error if state != "running" else "",
        "next_restart_at": None,
    }


def node(
    services: list[dict[str, Any]] | None = None,
    *,
    revisions: dict[str, str] | None = None,
    labels: tuple[str, ...] = (GP,),
    ago: timedelta | None = timedelta(seconds=10),
    **extra: Any,
) -> Node:
    """An unsaved node whose latest report came ``ago`` before NOW (None: never)."""
    if ago is None:
        return Node(name="node-a", labels=list(labels))
    report = {
        "node": "node-a",
        "services": services
        if services is not None
        else [service("api"), service("web")],
        "revisions": {GP: ETAG} if revisions is None else revisions,
        "stale": False,
        "stale_reason": "",
    } | extra
    return Node(
        name="node-a",
        labels=list(labels),
        last_report=report,
        last_report_at=NOW - ago,
        last_seen_at=NOW - ago,
    )


def run(n: Node, pub: dict[str, PublishedLabel] | None = None, **kw: Any) -> NodeView:
    return derive(n, published() if pub is None else pub, NOW, BEAT, **kw)


# --- the node's status ------------------------------------------------------


RULES = [
    ("all running as published", node(), None, "converged", None),
    ("reported just in time", node(ago=3 * BEAT), None, "converged", None),
    (
        "local store reports sha256",
        node(revisions={GP: SHA}),
        None,
        "converged",
        None,
    ),
    (
        "etag reported quoted",
        node(revisions={GP: f'"{ETAG}"'}),
        None,
        "converged",
        None,
    ),
    (
        "commit of the publisher",
        node(revisions={GP: COMMIT}),
        None,
        "converged",
        None,
    ),
    (
        "never reported",
        node(ago=None),
        None,
        "unknown",
        "the node has never reported",
    ),
    (
        "silent for more than 3 heartbeats",
        node(ago=3 * BEAT + timedelta(seconds=1)),
        None,
        "stale",
        "no report for 91s (more than 3 heartbeats)",
    ),
    (
        "older revision applied",
        node(revisions={GP: "0" * 32}),
        None,
        "drifted",
        f"node type {GP}: runs revision 000000000000, published eeeeeeeeeeee",
    ),
    (
        "label not applied at all",
        node(revisions={}),
        None,
        "drifted",
        f"node type {GP}: no applied revision reported",
    ),
    (
        "label nobody publishes",
        node(labels=(GP, "compute")),
        None,
        "drifted",
        "node type compute is not published",
    ),
    (
        "service missing",
        node([service("web")]),
        None,
        "drifted",
        "service api: not running on the node",
    ),
    (
        "service nobody asked for",
        node([service("api"), service("web"), service("db")]),
        None,
        "drifted",
        "service db: running on the node but not published",
    ),
    (
        "service failed",
        node([service("api", "failed", error="exit 1"), service("web")]),
        None,
        "drifted",
        "service api: state failed: exit 1",
    ),
    (
        "service in crashloop",
        node([service("api", "crashloop"), service("web")]),
        None,
        "drifted",
        "service api: state crashloop",
    ),
    (
        "service starting",
        node([service("api", "starting", "unknown"), service("web")]),
        None,
        "drifted",
        "service api: starting",
    ),
    (
        "service unhealthy",
        node([service("api", health="unhealthy", error="http 503"), service("web")]),
        None,
        "drifted",
        "service api: health unhealthy: http 503",
    ),
    (
        "agent cannot fetch its config",
        node(stale=True, stale_reason="s3: access denied"),
        None,
        "drifted",
        "agent reports its config stale: s3: access denied",
    ),
]


@pytest.mark.parametrize(
    ("case", "n", "pub", "status", "reason"),
    [pytest.param(*rule, id=rule[0]) for rule in RULES],
)
def test_node_status_follows_the_rules(
    case: str,
    n: Node,
    pub: dict[str, PublishedLabel] | None,
    status: str,
    reason: str | None,
):
    view = run(n, pub)

    assert view.status == status
    assert view.reasons == ([] if reason is None else [reason])


@pytest.mark.parametrize(
    "n",
    [node(ago=None), node(ago=timedelta(hours=3))],
    ids=["never reported", "stale"],
)
def test_without_a_fresh_report_every_service_is_unknown(n: Node):
    view = run(n)

    assert [(s.name, s.status) for s in view.services] == (
        [("api", "unknown"), ("web", "unknown")]
    )
    assert view.counts["ok"] == 0
    assert view.counts["unknown"] == 2


def test_a_stale_node_still_shows_what_it_last_reported():
    view = run(node([service("web"), service("db")], ago=timedelta(hours=3)))

    assert {
        s.name: (s.desired is not None, s.actual is not None) for s in view.services
    } == {
        "api": (True, False),
        "db": (False, True),
        "web": (True, True),
    }
    assert view.reasons == ["no report for 3h (more than 3 heartbeats)"]
    assert view.services[0].reason == view.reasons[0]


def test_an_unreadable_store_makes_a_reporting_node_unknown():
    view = run(node(), {}, store_error="get nodes/x.yaml: access denied")

    assert view.status == "unknown"
    assert view.reasons == [
        "published node configs could not be read: get nodes/x.yaml: access denied"
    ]
    assert {s.status for s in view.services} == {"unknown"}


def test_services_carry_desired_actual_and_counts():
    n = node([service("web", health="unhealthy"), service("db")])

    view = run(n)

    by_name = {s.name: s for s in view.services}
    assert [s.name for s in view.services] == ["api", "db", "web"]
    assert (by_name["api"].status, by_name["api"].actual) == ("missing", None)
    assert by_name["api"].desired == desired("api")
    assert (by_name["db"].status, by_name["db"].desired) == ("unexpected", None)
    assert by_name["db"].node_type == ""
    assert by_name["web"].status == "unhealthy"
    assert by_name["web"].actual == service("web", health="unhealthy")
    assert by_name["web"].node_type == GP
    assert view.counts == {
        "ok": 0,
        "missing": 1,
        "unexpected": 1,
        "unhealthy": 1,
        "failed": 0,
        "starting": 0,
        "unknown": 0,
    }


@pytest.mark.parametrize(
    ("applied", "shown"), [(ETAG, ETAG), (SHA, SHA), ("0" * 64, ETAG), ("", ETAG)]
)
def test_published_revision_is_shown_like_the_applied_one(applied: str, shown: str):
    view = run(node(revisions={GP: applied} if applied else {}))

    assert view.published == {GP: shown}
    assert view.published_commits == {GP: COMMIT}
    assert view.applied == ({GP: applied} if applied else {})


def test_applied_commits_come_from_the_publisher_or_the_history():
    older = "0" * 32
    n = node(revisions={GP: older, "compute": "f" * 64}, labels=(GP, "compute"))

    view = run(n, history={(GP, older): "a" * 40})

    assert view.applied_commits == {GP: "a" * 40, "compute": ""}
    assert run(node()).applied_commits == {GP: COMMIT}


def test_an_invalid_config_leaves_its_services_unknown_not_unexpected():
    pub = published(services=(), errors=("nodes/general-purpose.yaml: bad",))

    view = run(node(), pub)

    assert view.status == "drifted"
    assert view.reasons[0] == f"node type {GP}: published config is invalid"
    assert {s.status for s in view.services} == {"unknown"}


def test_the_last_label_wins_a_service_both_publish():
    pub = published() | published("edge", ("web",), etag="d" * 32)
    n = node(revisions={GP: ETAG, "edge": "d" * 32}, labels=(GP, "edge"))

    view = run(n, pub)

    assert view.status == "converged"
    assert {s.name: s.node_type for s in view.services} == {"api": GP, "web": "edge"}


@pytest.mark.parametrize(
    ("want", "actual", "verdict"),
    [
        (True, service("web"), ("ok", "")),
        (True, service("web", health="not_configured"), ("ok", "")),
        (True, service("web", health="unknown"), ("ok", "")),
        (True, None, ("missing", "not running on the node")),
        (
            False,
            service("web"),
            ("unexpected", "running on the node but not published"),
        ),
        (
            False,
            service("web", "stopped"),
            ("unexpected", "stopped on the node but not published"),
        ),
        (True, service("web", "failed"), ("failed", "state failed")),
        (
            True,
            service("web", "crashloop", error="oom"),
            ("failed", "state crashloop: oom"),
        ),
        (True, service("web", "stopped"), ("failed", "state stopped")),
        (True, service("web", "starting"), ("starting", "starting")),
        (True, service("web", health="unhealthy"), ("unhealthy", "health unhealthy")),
    ],
)
def test_service_status_table(
    want: bool, actual: dict[str, Any] | None, verdict: tuple[str, str]
):
    assert service_status(desired("web") if want else None, actual) == verdict


def test_heartbeat_defaults_to_30_seconds_and_follows_the_setting():
    assert heartbeat() == timedelta(seconds=30)
    with override_settings(FIREWORK_NODE_HEARTBEAT_SECONDS=5):
        assert heartbeat() == timedelta(seconds=5)


# --- loading from the store and the database --------------------------------

GENERAL = """\
node: general-purpose
services:
  - name: web
    image: /var/lib/images/web-rootfs.ext4
    kernel: /var/lib/kernels/vmlinux
    vcpus: 2
    memory_mb: 512
    kernel_args: console=ttyS0
"""


class CountingStore(LocalStore):
    """A local store that counts its reads."""

    gets: list[str]

    def get(self, key: str) -> StoredObject:
        self.gets.append(key)
        return super().get(key)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CountingStore:
    counting = CountingStore(tmp_path)
    counting.gets = []
    counting.put("nodes/general-purpose.yaml", GENERAL.encode())
    monkeypatch.setattr("controlplane.nodestatus.open_store", lambda: counting)
    return counting


def publish_record(text: str, commit: str) -> None:
    repo = ConfigRepository.objects.create(name="ops", clone_url="https://x.test/o")
    revision = Revision.objects.create(
        repository=repo,
        ref="main",
        commit_sha=commit,
        trigger="api",
        status="succeeded",
        published=True,
    )
    NodeConfigOutput.objects.create(
        revision=revision,
        node_type=GP,
        content=text,
        sha256=hashlib.sha256(text.encode()).hexdigest(),
        etag=etag_of(text.encode()),
    )


@pytest.mark.django_db
def test_node_views_read_each_label_once_and_name_the_commit(store: CountingStore):
    publish_record(GENERAL, COMMIT)
    etag = etag_of(GENERAL.encode()).strip('"')
    for name in ("node-a", "node-b"):
        Node.objects.create(
            name=name,
            labels=[GP],
            last_report={"revisions": {GP: etag}, "services": [service("web")]},
            last_report_at=NOW,
            last_seen_at=NOW,
        )
    Node.objects.create(name="node-c", labels=[GP, "compute"])

    views = node_views(now=NOW)

    assert store.gets == ["nodes/compute.yaml", "nodes/general-purpose.yaml"]
    assert [(v.name, v.status) for v in views] == [
        ("node-a", "converged"),
        ("node-b", "converged"),
        ("node-c", "unknown"),
    ]
    assert views[0].published_commits == {GP: COMMIT}
    assert views[0].applied_commits == {GP: COMMIT}
    assert views[0].services[0].desired is not None
    assert views[0].services[0].desired["memory_mb"] == 512


@pytest.mark.django_db
def test_node_view_loads_one_node_or_raises(store: CountingStore):
    Node.objects.create(name="node-a", labels=[GP])

    assert node_view("node-a", now=NOW).status == "unknown"
    with pytest.raises(Node.DoesNotExist):
        node_view("nope", now=NOW)


@pytest.mark.django_db
def test_an_unconfigured_store_degrades_to_unknown(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FIREWORK_STORE", "gopher")
    Node.objects.create(
        name="node-a",
        labels=[GP],
        last_report={"revisions": {}, "services": []},
        last_report_at=NOW,
    )

    view = node_view("node-a", now=NOW)

    assert view.status == "unknown"
    assert "FIREWORK_STORE" in view.reasons[0]
