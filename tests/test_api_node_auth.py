"""``/api/v1/nodes/``: who may do what, enrollment, and status reports."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from controlplane.models import EnrollmentToken, Node, NodeToken
from controlplane.nodetokens import issue_enrollment_token
from tests.apisupport import Personas, session_client, token_client
from tests.nodereportdata import report as full_report
from tests.nodereportdata import service as service_entry

LIST = "/api/v1/nodes/"
MAX_REPORT = 256 * 1024


def node_url(name: str, tail: str = "") -> str:
    return f"{LIST}{name}/{tail}"


def report(
    state: str = "running", health: str = "healthy", **extra: Any
) -> dict[str, Any]:
    """One service, ``web``, in ``state`` with ``health``."""
    web = service_entry("web", state=state)
    web["health"] = {**web["health"], "status": health}
    return full_report(services=[web]) | extra


def bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def post_report(client: APIClient, name: str, body: Any, **meta: Any) -> Any:
    raw = body.decode() if isinstance(body, bytes) else json.dumps(body)
    return client.generic(
        "POST", node_url(name, "status"), raw, "application/json", **meta
    )


# -- users: reading needs a login, writing an operator


def test_anonymous_is_refused_everywhere(node_a: Node):
    client = APIClient()

    assert client.get(LIST).status_code == 401
    assert client.get(node_url("node-a")).status_code == 401
    assert client.get(node_url("node-a", "actual")).status_code == 401
    assert client.post(LIST, {"name": "x", "labels": []}).status_code == 401
    assert client.post(node_url("node-a", "enrollment-tokens/")).status_code == 401
    assert client.delete(node_url("node-a", "enrollment-tokens/")).status_code == 401
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
    assert bob.delete(node_url("node-a", "enrollment-tokens/")).status_code == 403
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
        ("delete", node_url("node-a", "enrollment-tokens/")),
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
@pytest.mark.parametrize("token", ["own", "fwn_unknown"])
def test_a_node_token_opens_no_user_endpoint(token_a: str, path: str, token: str):
    response = bearer(token_a if token == "own" else token).get(path)

    # refused as node credentials, not taken for none: the node's operator
    # should not go looking for an expired token
    assert response.status_code == 403
    assert response.json() == {"detail": "node credentials cannot use this endpoint"}
    assert "WWW-Authenticate" not in response


@pytest.mark.parametrize(
    "path", ["/api/v1/repositories/", "/api/v1/revisions/", "/api/v1/node-configs/"]
)
def test_users_endpoints_still_challenge_for_a_users_token(path: str, db: None):
    response = APIClient().get(path)

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"


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


def enroll_status(token: str) -> int:
    response = APIClient().post(
        node_url("node-a", "enroll"), {"enrollment_token": token}, format="json"
    )
    return response.status_code


def test_a_new_enrollment_token_cancels_the_unused_one(people: Personas, node_a: Node):
    alice = token_client(people.alice_token)
    first = alice.post(node_url("node-a", "enrollment-tokens/")).json()["token"]
    second = alice.post(node_url("node-a", "enrollment-tokens/")).json()["token"]

    assert enroll_status(first) == 403
    assert enroll_status(second) == 201


def test_an_operator_cancels_the_unused_enrollment_token(
    people: Personas, node_a: Node, node_b: Node
):
    alice = token_client(people.alice_token)
    token = alice.post(node_url("node-a", "enrollment-tokens/")).json()["token"]
    other, _record = issue_enrollment_token(node_b)

    cancelled = alice.delete(node_url("node-a", "enrollment-tokens/"))
    again = alice.delete(node_url("node-a", "enrollment-tokens/"))

    assert cancelled.status_code == 200
    assert cancelled.json() == {"cancelled": 1}
    assert again.json() == {"cancelled": 0}
    assert enroll_status(token) == 403
    other_node = APIClient().post(
        node_url("node-b", "enroll"), {"enrollment_token": other}, format="json"
    )
    assert other_node.status_code == 201


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


def test_actual_is_404_before_the_first_report(people: Personas, node_a: Node):
    response = token_client(people.bob_token).get(node_url("node-a", "actual"))

    assert response.status_code == 404
