"""``/api/v1/nodes/``: who may do what, enrollment, and status reports."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from controlplane.models import EnrollmentToken, Node, NodeToken, NodeTransition
from controlplane.nodereports import HISTORY_LIMIT
from controlplane.nodetokens import issue_enrollment_token, issue_node_token
from tests.apisupport import Personas, make_personas, session_client, token_client

LIST = "/api/v1/nodes/"
MAX_REPORT = 256 * 1024


def node_url(name: str, tail: str = "") -> str:
    return f"{LIST}{name}/{tail}"


def report(
    state: str = "running", health: str = "healthy", **extra: Any
) -> dict[str, Any]:
    body = {
        "node": "general-purpose",
        "last_revision": "abc123",
        "services": [
            {
                "name": "web",
                "state": state,
                "pid": 4242,
                "health": {
                    "status": health,
                    "last_checked": "2026-02-05T12:00:00Z",
                    "failures": 0,
                    "last_error": "",
                },
                "guest_ip": "172.16.0.2",
                "restarts": 0,
                "last_error": "",
                "next_restart_at": None,
            }
        ],
        "phase": "running",
        "labels": ["general-purpose"],
        "revisions": {"general-purpose": "abc123"},
        "stale": False,
        "stale_reason": "",
        "stale_since": None,
        "time": "2026-02-05T12:00:00Z",
        "agent_version": "0.4.0",
        "host": {"kernel": "6.1.0", "cpus": 8},
    }
    return body | extra


def bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def post_report(client: APIClient, name: str, body: Any, **meta: Any) -> Any:
    raw = body.decode() if isinstance(body, bytes) else json.dumps(body)
    return client.generic(
        "POST", node_url(name, "status"), raw, "application/json", **meta
    )


@pytest.fixture
def people(db: None) -> Personas:
    return make_personas()


@pytest.fixture
def node_a(db: None) -> Node:
    return Node.objects.create(name="node-a", labels=["general-purpose"])


@pytest.fixture
def node_b(db: None) -> Node:
    return Node.objects.create(name="node-b", labels=["compute"])


@pytest.fixture
def token_a(node_a: Node) -> str:
    return issue_node_token(node_a)


@pytest.fixture
def token_b(node_b: Node) -> str:
    return issue_node_token(node_b)


# -- users: reading needs a login, writing an operator


def test_anonymous_is_refused_everywhere(node_a: Node):
    client = APIClient()

    assert client.get(LIST).status_code == 401
    assert client.get(node_url("node-a")).status_code == 401
    assert client.get(node_url("node-a", "actual")).status_code == 401
    assert client.post(LIST, {"name": "x", "labels": []}).status_code == 401
    assert client.post(node_url("node-a", "enrollment-tokens/")).status_code == 401
    assert client.post(node_url("node-a", "revoke-tokens")).status_code == 401
    assert post_report(client, "node-a", report()).status_code == 401


def test_a_reader_reads_but_cannot_write(people: Personas, node_a: Node):
    bob = token_client(people.bob_token)

    assert bob.get(LIST).status_code == 200
    assert bob.get(node_url("node-a")).status_code == 200
    created = bob.post(LIST, {"name": "x", "labels": []}, format="json")
    assert created.status_code == 403
    assert bob.delete(node_url("node-a")).status_code == 403
    assert bob.post(node_url("node-a", "enrollment-tokens/")).status_code == 403
    assert bob.post(node_url("node-a", "revoke-tokens")).status_code == 403


def test_an_operator_creates_lists_and_deletes_nodes(people: Personas):
    alice = token_client(people.alice_token)

    created = alice.post(
        LIST, {"name": "edge-1", "labels": ["general-purpose"]}, format="json"
    )
    listed = alice.get(LIST)
    deleted = alice.delete(node_url("edge-1"))

    assert created.status_code == 201, created.json()
    assert created.json()["labels"] == ["general-purpose"]
    assert [n["name"] for n in listed.json()["results"]] == ["edge-1"]
    assert deleted.status_code == 204
    assert not Node.objects.exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "Not_A_Label", "labels": []}, "name"),
        ({"name": "ok", "labels": ["Bad Type"]}, "labels"),
        ({"name": "ok", "labels": ["a", "a"]}, "labels"),
    ],
)
def test_a_bad_node_is_refused_naming_the_field(
    people: Personas, body: dict[str, Any], field: str
):
    response = token_client(people.alice_token).post(LIST, body, format="json")

    assert response.status_code == 400
    assert field in response.json()


def test_an_operator_session_needs_csrf_to_write(people: Personas):
    without = session_client(people.alice, with_csrf=False)
    with_csrf = session_client(people.alice, with_csrf=True)
    body = {"name": "edge-1", "labels": []}

    assert without.post(LIST, body, format="json").status_code == 403
    assert with_csrf.post(LIST, body, format="json").status_code == 201


# -- node tokens: only their own node, only reading it and reporting for it


def test_a_node_reads_its_own_detail_and_actual(token_a: str, node_a: Node):
    client = bearer(token_a)
    assert post_report(client, "node-a", report()).status_code == 204

    detail = client.get(node_url("node-a"))
    actual = client.get(node_url("node-a", "actual"))

    assert detail.status_code == 200
    assert detail.json()["report"]["services"] == [
        {"name": "web", "state": "running", "health": "healthy"}
    ]
    assert detail.json()["last_seen_at"] is not None
    assert actual.status_code == 200
    assert actual.json()["services"][0]["pid"] == 4242


def test_a_node_cannot_report_for_another(token_a: str, node_b: Node):
    response = post_report(bearer(token_a), "node-b", report())

    assert response.status_code == 403
    assert Node.objects.get(name="node-b").last_report is None


def test_a_node_cannot_read_another(token_a: str, node_b: Node):
    assert bearer(token_a).get(node_url("node-b", "actual")).status_code == 403
    assert bearer(token_a).get(node_url("node-b")).status_code == 403


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", LIST),
        ("post", LIST),
        ("delete", node_url("node-a")),
        ("post", node_url("node-a", "enrollment-tokens/")),
        ("post", node_url("node-a", "revoke-tokens")),
    ],
)
def test_a_node_token_opens_no_other_node_endpoint(
    token_a: str, method: str, path: str
):
    response = getattr(bearer(token_a), method)(path)

    assert response.status_code == 403
    assert Node.objects.filter(name="node-a").exists()
    assert NodeToken.objects.get().revoked_at is None


@pytest.mark.parametrize(
    "path", ["/api/v1/repositories/", "/api/v1/revisions/", "/api/v1/node-configs/"]
)
def test_a_node_token_opens_no_user_endpoint(token_a: str, path: str):
    response = bearer(token_a).get(path)

    # These views do not know node tokens (they are not among
    # DEFAULT_AUTHENTICATION_CLASSES), so the request has no credentials.
    assert response.status_code == 401


def test_users_cannot_report_status(people: Personas, node_a: Node):
    response = post_report(token_client(people.alice_token), "node-a", report())

    assert response.status_code == 401
    assert "node token" in response.json()["detail"]


def test_a_revoked_token_is_refused(people: Personas, token_a: str, node_a: Node):
    revoked = token_client(people.alice_token).post(node_url("node-a", "revoke-tokens"))

    response = post_report(bearer(token_a), "node-a", report())

    assert revoked.json() == {"revoked": 1}
    assert response.status_code == 401
    assert bearer(token_a).get(node_url("node-a")).status_code == 401


def test_an_unknown_node_token_is_refused(node_a: Node):
    response = post_report(bearer("fwn_not-a-real-token"), "node-a", report())

    assert response.status_code == 401


def test_last_used_at_is_written_at_most_once_a_minute(token_a: str, node_a: Node):
    client = bearer(token_a)
    client.get(node_url("node-a"))
    first = NodeToken.objects.get().last_used_at
    client.get(node_url("node-a"))

    assert first is not None
    assert NodeToken.objects.get().last_used_at == first
    NodeToken.objects.update(last_used_at=first - timedelta(minutes=2))
    client.get(node_url("node-a"))
    later = NodeToken.objects.get().last_used_at
    assert later is not None
    assert later > first - timedelta(minutes=2)


# -- enrollment


def test_enrollment_gives_a_node_token_once(people: Personas, node_a: Node):
    alice = token_client(people.alice_token)
    issued = alice.post(node_url("node-a", "enrollment-tokens/"))
    enrollment = issued.json()["token"]

    first = APIClient().post(
        node_url("node-a", "enroll"), {"enrollment_token": enrollment}, format="json"
    )
    again = APIClient().post(
        node_url("node-a", "enroll"), {"enrollment_token": enrollment}, format="json"
    )

    assert issued.status_code == 201
    assert enrollment.startswith("fwe_")
    assert issued.json()["expires_at"]
    assert first.status_code == 201
    assert first.json()["node"] == "node-a"
    token = first.json()["token"]
    assert token.startswith("fwn_")
    assert again.status_code == 403
    assert again.json() == first_refusal()
    assert post_report(bearer(token), "node-a", report()).status_code == 204
    stored = [*NodeToken.objects.values_list("token_sha256", flat=True)]
    stored += EnrollmentToken.objects.values_list("token_sha256", flat=True)
    assert token not in stored and enrollment not in stored


def first_refusal() -> dict[str, str]:
    return {"detail": "enrollment token is invalid, expired or already used"}


def test_an_expired_enrollment_token_is_refused(node_a: Node):
    token, record = issue_enrollment_token(node_a)
    record.expires_at = timezone.now() - timedelta(seconds=1)
    record.save()

    response = APIClient().post(
        node_url("node-a", "enroll"), {"enrollment_token": token}, format="json"
    )

    assert response.status_code == 403
    assert response.json() == first_refusal()
    assert not NodeToken.objects.exists()


def test_another_nodes_enrollment_token_is_refused(node_a: Node, node_b: Node):
    token, _record = issue_enrollment_token(node_b)

    response = APIClient().post(
        node_url("node-a", "enroll"), {"enrollment_token": token}, format="json"
    )

    assert response.status_code == 403
    assert response.json() == first_refusal()
    assert EnrollmentToken.objects.get().used_at is None


def test_an_unknown_node_gets_the_same_refusal(db: None):
    response = APIClient().post(
        node_url("ghost", "enroll"), {"enrollment_token": "fwe_x"}, format="json"
    )

    assert response.status_code == 403
    assert response.json() == first_refusal()


# -- status reports


def test_a_declared_oversized_report_is_refused_unread(token_a: str, node_a: Node):
    response = post_report(
        bearer(token_a), "node-a", report(), CONTENT_LENGTH=str(MAX_REPORT + 1)
    )

    assert response.status_code == 413
    assert "limit" in response.json()["detail"]


def test_an_oversized_report_body_is_refused(token_a: str, node_a: Node):
    big = report(stale_reason="x" * MAX_REPORT)

    response = post_report(bearer(token_a), "node-a", big)

    assert response.status_code == 413
    assert Node.objects.get().last_report is None


def test_an_oversized_body_without_length_is_refused(token_a: str, node_a: Node):
    big = json.dumps(report(stale_reason="x" * MAX_REPORT)).encode()

    response = post_report(
        bearer(token_a),
        "node-a",
        big,
        CONTENT_LENGTH="",
        **{"wsgi.input_terminated": True},
    )

    assert response.status_code == 413


def test_a_body_longer_than_its_length_is_cut_there(token_a: str, node_a: Node):
    response = post_report(bearer(token_a), "node-a", report(), CONTENT_LENGTH="10")

    assert response.status_code == 400
    assert Node.objects.get().last_report is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"phase": "dancing"}, "phase"),
        ({"time": "yesterday"}, "time"),
        ({"services": [{"name": "web"}]}, "services"),
        ({"host": {"disks": ["sda"]}}, "host"),
    ],
)
def test_a_malformed_report_is_refused_naming_the_field(
    token_a: str, node_a: Node, change: dict[str, Any], field: str
):
    response = post_report(bearer(token_a), "node-a", report() | change)

    assert response.status_code == 400
    assert field in response.json()


def test_a_bad_service_state_names_the_service_field(token_a: str, node_a: Node):
    response = post_report(bearer(token_a), "node-a", report(state="sleeping"))

    assert response.status_code == 400
    assert response.json() == {
        "services": {"0": {"state": ['"sleeping" is not a valid choice.']}}
    }


def test_a_body_that_is_not_json_is_refused(token_a: str, node_a: Node):
    assert post_report(bearer(token_a), "node-a", b"{nope").status_code == 400
    assert post_report(bearer(token_a), "node-a", b"[]").status_code == 400


def test_reports_are_stored_and_changes_recorded(token_a: str, node_a: Node):
    client = bearer(token_a)

    first = post_report(client, "node-a", report(state="starting", health="unknown"))
    after_first = NodeTransition.objects.count()
    second = post_report(client, "node-a", report(state="running", health="unknown"))

    assert first.status_code == second.status_code == 204
    assert after_first == 0
    change = NodeTransition.objects.get()
    assert (change.service, change.field) == ("web", "state")
    assert (change.old_value, change.new_value) == ("starting", "running")
    node = Node.objects.get()
    assert node.last_report is not None
    assert node.last_report["services"][0]["state"] == "running"
    assert node.last_report["host"] == {"kernel": "6.1.0", "cpus": 8}
    assert node.agent_version == "0.4.0"
    assert node.last_seen_at is not None


def test_history_keeps_the_newest_500(token_a: str, node_a: Node):
    client = bearer(token_a)
    post_report(client, "node-a", report(state="starting"))
    NodeTransition.objects.bulk_create(
        NodeTransition(
            node=node_a, service="old", field="state", old_value="a", new_value="b"
        )
        for _ in range(HISTORY_LIMIT)
    )
    oldest = NodeTransition.objects.order_by("id").first()

    post_report(client, "node-a", report(state="running"))

    assert NodeTransition.objects.filter(node=node_a).count() == HISTORY_LIMIT
    assert oldest is not None
    assert not NodeTransition.objects.filter(pk=oldest.pk).exists()
    assert NodeTransition.objects.filter(service="web").count() == 1


def test_actual_is_404_before_the_first_report(people: Personas, node_a: Node):
    response = token_client(people.bob_token).get(node_url("node-a", "actual"))

    assert response.status_code == 404
