"""``POST /api/v1/nodes/<name>/status``: what a node's report gets back.

The endpoint skips DRF's request handling for speed
(:mod:`controlplane.api.statusreports`); these tests hold it to the answers the
DRF view gave: the same codes, bodies and headers, and the serializer's own
errors for a refused report.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from rest_framework.renderers import JSONRenderer
from rest_framework.test import APIClient

from controlplane.api.nodeserializers import StatusReportSerializer
from controlplane.models import Node, NodeTransition
from controlplane.nodereports import HISTORY_LIMIT
from tests.nodereportdata import report as quick_report_body
from tests.test_api_node_auth import MAX_REPORT, bearer, node_url, post_report, report
from tests.test_quickreport import LEFT as ODD_BODIES


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


@pytest.mark.parametrize(
    "change", [change for change, field in ODD_BODIES if field is not None]
)
def test_a_refused_report_gets_the_serializers_own_errors(
    token_a: str, node_a: Node, change: dict[str, Any]
):
    body = quick_report_body() | change
    expected = StatusReportSerializer(data=copy.deepcopy(body))
    assert not expected.is_valid()

    response = post_report(bearer(token_a), "node-a", body)

    assert response.status_code == 400
    assert response.content == JSONRenderer().render(expected.errors)
    assert Node.objects.get().last_report is None


def test_a_bad_service_state_names_the_service_field(token_a: str, node_a: Node):
    response = post_report(bearer(token_a), "node-a", report(state="sleeping"))

    assert response.status_code == 400
    assert response.json() == {
        "services": {"0": {"state": ['"sleeping" is not a valid choice.']}}
    }


@pytest.mark.parametrize(
    ("authorization", "detail"),
    [
        (None, "this endpoint takes a node token: Authorization: Bearer fwn_..."),
        (
            "Token abc",
            "this endpoint takes a node token: Authorization: Bearer fwn_...",
        ),
        ("Bearer fwn_unknown", "invalid or revoked node token"),
    ],
)
def test_refused_credentials_get_the_same_401_as_before(
    node_a: Node, authorization: str | None, detail: str
):
    meta = {"HTTP_AUTHORIZATION": authorization} if authorization else {}

    response = post_report(APIClient(), "node-a", report(), **meta)

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": detail}


def test_another_nodes_report_gets_the_same_403_as_before(token_a: str, node_b: Node):
    response = post_report(bearer(token_a), "node-b", report())

    assert response.json() == {
        "detail": "only the node itself may do this, with its node token"
    }
    assert "WWW-Authenticate" not in response


def test_a_heartbeat_costs_two_queries(
    token_a: str, node_a: Node, django_assert_num_queries: Any
):
    client = bearer(token_a)
    assert post_report(client, "node-a", report()).status_code == 204

    # the token with its node, then one UPDATE: the states did not change
    with django_assert_num_queries(2):
        response = post_report(client, "node-a", report(time="2026-02-05T12:00:30Z"))

    assert response.status_code == 204
    assert not response.content
    stored = Node.objects.get().last_report
    assert stored is not None
    assert stored["time"] == "2026-02-05T12:00:30Z"


def test_a_report_the_serializer_normalises_is_stored_normalised(
    token_a: str, node_a: Node
):
    body = report(stale="false", time="2026-02-05T14:00:00+02:00")
    body["services"][0]["pid"] = "12"

    response = post_report(bearer(token_a), "node-a", body)

    assert response.status_code == 204
    stored = Node.objects.get().last_report
    assert stored is not None
    assert (stored["stale"], stored["time"]) == (False, "2026-02-05T12:00:00Z")
    assert stored["services"][0]["pid"] == 12


def test_other_methods_on_the_status_endpoint_still_answer_as_drf(
    token_a: str, node_a: Node
):
    assert APIClient().get(node_url("node-a", "status")).status_code == 401
    assert bearer(token_a).get(node_url("node-a", "status")).status_code == 405
    assert bearer(token_a).options(node_url("node-a", "status")).status_code == 200


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
    assert node.last_report["host"] == report()["host"]
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
