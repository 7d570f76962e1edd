"""Desired against actual through the API: node fields, ``desired`` and services.

A node config is published in a real local object store and recorded as the
output of a revision; the node reports through the real status endpoint with
its own node token.
"""

from __future__ import annotations

import hashlib
import json
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from controlplane.models import Node, NodeConfigOutput, Revision
from controlplane.nodetokens import issue_node_token
from controlplane.objectstore import LocalStore, etag_of
from tests.apisupport import Personas, make_repository, token_client

LIST = "/api/v1/nodes/"
SERVICES = "/api/v1/services/"
GP = "general-purpose"
COMMIT = "c0ffee" + "0" * 34
GENERAL = textwrap.dedent(
    """\
    node: general-purpose
    services:
      - name: web
        image: /var/lib/images/web-rootfs.ext4
        kernel: /var/lib/kernels/vmlinux
        vcpus: 2
        memory_mb: 512
        kernel_args: console=ttyS0
      - name: api
        image: /var/lib/images/api-rootfs.ext4
        kernel: /var/lib/kernels/vmlinux
        vcpus: 1
        memory_mb: 384
        kernel_args: console=ttyS0
    """
)
ETAG = etag_of(GENERAL.encode()).strip('"')
SHA = hashlib.sha256(GENERAL.encode()).hexdigest()


def node_url(name: str, tail: str = "") -> str:
    return f"{LIST}{name}/{tail}"


def running(name: str, health: str = "healthy", error: str = "") -> dict[str, Any]:
    return {
        "name": name,
        "state": "running",
        "pid": 4242,
        "health": {
            "status": health,
            "last_checked": "2026-02-05T12:00:00Z",
            "failures": 0,
            "last_error": error,
        },
        "guest_ip": "",
        "restarts": 0,
        "last_error": "",
        "next_restart_at": None,
    }


def report(services: list[dict[str, Any]], revision: str = ETAG) -> dict[str, Any]:
    return {
        "node": "node-a",
        "last_revision": revision,
        "services": services,
        "phase": "running",
        "labels": [GP],
        "revisions": {GP: revision},
        "stale": False,
        "stale_reason": "",
        "stale_since": None,
        "time": "2026-02-05T12:00:00Z",
        "agent_version": "0.4.0",
    }


def bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def send(token: str, body: dict[str, Any]) -> None:
    response = bearer(token).generic(
        "POST", node_url("node-a", "status"), json.dumps(body), "application/json"
    )
    assert response.status_code == 204, response.content


@pytest.fixture
def bob(people: Personas) -> APIClient:
    return token_client(people.bob_token)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db: None) -> LocalStore:
    """``general-purpose`` published by a revision at COMMIT."""
    root = tmp_path / "store"
    monkeypatch.setenv("FIREWORK_STORE", "local")
    monkeypatch.setenv("FIREWORK_STORE_DIR", str(root))
    local = LocalStore(root)
    etag = local.put("nodes/general-purpose.yaml", GENERAL.encode())
    revision = Revision.objects.create(
        repository=make_repository("ops"),
        ref="main",
        commit_sha=COMMIT,
        trigger="api",
        status="succeeded",
        published=True,
    )
    NodeConfigOutput.objects.create(
        revision=revision,
        node_type=GP,
        content=GENERAL,
        sha256=SHA,
        object_key="nodes/general-purpose.yaml",
        etag=etag,
        services=["api", "web"],
    )
    return local


@pytest.fixture
def token_a(store: LocalStore) -> str:
    return issue_node_token(Node.objects.create(name="node-a", labels=[GP]))


@pytest.fixture
def token_b(store: LocalStore) -> str:
    return issue_node_token(Node.objects.create(name="node-b", labels=["compute"]))


# --- the derived fields of nodes ---------------------------------------------


def test_a_converged_node_lists_its_revisions_and_counts(bob: APIClient, token_a: str):
    send(token_a, report([running("web"), running("api")]))

    listed = bob.get(LIST).json()["results"][0]

    assert listed["status"] == "converged"
    assert listed["reasons"] == []
    assert listed["applied"] == {GP: ETAG}
    assert listed["published"] == {GP: ETAG}
    assert listed["counts"]["ok"] == 2
    assert sum(listed["counts"].values()) == 2


def test_a_local_directory_agent_reporting_sha256_is_converged(
    bob: APIClient, token_a: str
):
    send(token_a, report([running("web"), running("api")], revision=SHA))

    detail = bob.get(node_url("node-a")).json()

    assert detail["status"] == "converged"
    assert detail["published"] == {GP: SHA}


def test_an_unhealthy_service_and_an_old_revision_drift_the_node(
    token_a: str,
):
    old = "0" * 32
    send(token_a, report([running("web", "unhealthy", "http 503")], revision=old))

    detail = bearer(token_a).get(node_url("node-a")).json()

    assert detail["status"] == "drifted"
    assert detail["reasons"] == [
        f"node type {GP}: runs revision {old[:12]}, published {ETAG[:12]}",
        "service api: not running on the node",
        "service web: health unhealthy: http 503",
    ]
    assert detail["counts"]["missing"] == 1
    assert detail["counts"]["unhealthy"] == 1


def test_a_silent_node_is_stale_and_never_green(bob: APIClient, token_a: str):
    send(token_a, report([running("web"), running("api")]))
    Node.objects.filter(name="node-a").update(
        last_report_at=timezone.now() - timedelta(minutes=5)
    )

    listed = bob.get(LIST).json()["results"][0]

    assert listed["status"] == "stale"
    assert listed["counts"]["ok"] == 0
    assert listed["counts"]["unknown"] == 2


def test_a_node_that_never_reported_is_unknown(bob: APIClient, token_b: str):
    listed = bob.get(LIST).json()["results"][0]

    assert listed["status"] == "unknown"
    assert listed["reasons"] == ["the node has never reported"]
    assert listed["published"] == {}


def test_nodes_still_list_when_the_store_cannot_be_read(
    bob: APIClient, token_a: str, monkeypatch: pytest.MonkeyPatch
):
    send(token_a, report([running("web"), running("api")]))
    monkeypatch.setenv("FIREWORK_STORE", "gopher")

    response = bob.get(LIST)

    assert response.status_code == 200
    assert response.json()["results"][0]["status"] == "unknown"


# --- GET nodes/<name>/desired ------------------------------------------------


def test_desired_lists_the_published_services_with_revisions(
    bob: APIClient, token_a: str
):
    body = bob.get(node_url("node-a", "desired")).json()

    assert body["node"] == "node-a"
    assert body["node_types"] == [
        {
            "node_type": GP,
            "published": True,
            "revision": ETAG,
            "sha256": SHA,
            "commit": COMMIT,
            "errors": [],
        }
    ]
    assert [s["name"] for s in body["services"]] == ["api", "web"]
    assert body["services"][1]["memory_mb"] == 512
    assert body["services"][1]["node_type"] == GP


def test_desired_names_a_node_type_that_is_not_published(bob: APIClient, token_b: str):
    body = bob.get(node_url("node-b", "desired")).json()

    assert body["node_types"][0]["published"] is False
    assert body["services"] == []


def test_desired_is_for_users_and_the_node_itself(
    token_a: str, token_b: str, bob: APIClient
):
    assert bearer(token_a).get(node_url("node-a", "desired")).status_code == 200
    assert bearer(token_b).get(node_url("node-a", "desired")).status_code == 403
    assert APIClient().get(node_url("node-a", "desired")).status_code == 401
    assert bob.get(node_url("nope", "desired")).status_code == 404


def test_desired_is_503_when_the_store_cannot_be_read(
    bob: APIClient, token_a: str, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("FIREWORK_STORE", "gopher")

    response = bob.get(node_url("node-a", "desired"))

    assert response.status_code == 503
    assert "FIREWORK_STORE" in response.json()["detail"]


# --- GET services/ -----------------------------------------------------------


def test_services_say_which_commit_runs_where(
    bob: APIClient, token_a: str, token_b: str
):
    send(token_a, report([running("web"), running("api", "unhealthy")]))

    entries = bob.get(SERVICES).json()["results"]

    assert [(e["service"], e["node"], e["status"]) for e in entries] == [
        ("api", "node-a", "unhealthy"),
        ("web", "node-a", "ok"),
    ]
    assert entries[1] == {
        "service": "web",
        "node": "node-a",
        "node_type": GP,
        "status": "ok",
        "reason": "",
        "node_status": "drifted",
        "applied": ETAG,
        "applied_commit": COMMIT,
        "published": ETAG,
        "published_commit": COMMIT,
        "state": "running",
        "health": "healthy",
    }


def test_services_filter_by_service_and_node(bob: APIClient, token_a: str):
    send(token_a, report([running("web"), running("db")]))

    by_service = bob.get(SERVICES, {"service": "db"}).json()["results"]
    by_node = bob.get(SERVICES, {"node": "node-b"}).json()["results"]

    assert [(e["service"], e["status"]) for e in by_service] == [("db", "unexpected")]
    assert by_service[0]["node_type"] == ""
    assert by_node == []


def test_services_are_for_users_only(token_a: str):
    assert bearer(token_a).get(SERVICES).status_code == 403
    assert bearer(token_a).get(SERVICES, {"node": "node-a"}).status_code == 403
    assert APIClient().get(SERVICES).status_code == 401
