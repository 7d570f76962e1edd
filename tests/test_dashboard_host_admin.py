"""Managing nodes on the dashboard's node pages: register, tokens, delete.

Alice is an operator (staff), bob only logs in; anonymous visitors are sent to
the login page. Tokens the pages issue are tried on the real API endpoints.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.test import Client
from pytest_django import Settings

from controlplane.dashboard.hostforms import parse_labels
from controlplane.models import EnrollmentToken, Node, NodeToken
from controlplane.nodetokens import issue_node_token
from tests.dashboard_data import make_user

TOKEN = re.compile(r"fwe_[A-Za-z0-9_-]{20,}")


@pytest.fixture(autouse=True)
def empty_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing published: the node pages read an empty local store."""
    monkeypatch.setenv("FIREWORK_STORE", "local")
    monkeypatch.setenv("FIREWORK_STORE_DIR", str(tmp_path / "store"))
    (tmp_path / "store").mkdir()


@pytest.fixture(autouse=True)
def fast_hashing(settings: Settings) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def alice(db: None) -> Client:
    client = Client()
    client.force_login(make_user("alice", staff=True))
    return client


@pytest.fixture
def bob(db: None) -> Client:
    client = Client()
    client.force_login(make_user("bob"))
    return client


@pytest.fixture
def host(db: None) -> Node:
    return Node.objects.create(name="host-17", labels=["general-purpose"])


def issue(client: Client, name: str = "host-17") -> str:
    response = client.post(f"/hosts/{name}/enrollment-token")
    assert response.status_code == 200
    found = TOKEN.search(response.content.decode())
    assert found is not None
    return found.group(0)


# -- registering


def test_operator_sees_the_register_form(alice: Client) -> None:
    page = alice.get("/hosts/").content.decode()
    assert "Register a node" in page
    assert 'action="/hosts/register"' in page
    assert "csrfmiddlewaretoken" in page


def test_operator_registers_a_node_and_lands_on_its_page(alice: Client) -> None:
    response = alice.post(
        "/hosts/register", {"name": "host-17", "labels": "general-purpose, edge  gpu"}
    )
    assert response.status_code == 302
    assert response["Location"] == "/hosts/host-17/"
    node = Node.objects.get(name="host-17")
    assert node.labels == ["general-purpose", "edge", "gpu"]
    page = alice.get(response["Location"]).content.decode()
    assert "Node host-17 registered." in page
    assert "Issue an enrollment token" in page


def test_a_node_may_have_no_node_types_yet(alice: Client) -> None:
    assert alice.post("/hosts/register", {"name": "spare"}).status_code == 302
    assert Node.objects.get(name="spare").labels == []


@pytest.mark.parametrize(
    ("name", "labels", "error"),
    [
        ("Host_17", "general-purpose", "a DNS label"),
        ("", "general-purpose", "This field is required."),
        ("-host", "", "a DNS label"),
        ("host-17", "General Purpose", "not a node type: &#x27;General&#x27;"),
        ("host-17", "edge, bad/type", "not a node type: &#x27;bad/type&#x27;"),
    ],
)
def test_bad_input_is_shown_next_to_its_field(
    alice: Client, name: str, labels: str, error: str
) -> None:
    response = alice.post("/hosts/register", {"name": name, "labels": labels})
    assert response.status_code == 200
    page = response.content.decode()
    assert 'class="errorlist field-error"' in page
    assert error in page
    assert not Node.objects.exists()


def test_a_taken_name_is_refused(alice: Client, host: Node) -> None:
    response = alice.post("/hosts/register", {"name": "host-17", "labels": "edge"})
    assert response.status_code == 200
    assert "A node with this name already exists." in response.content.decode()
    assert Node.objects.get().labels == ["general-purpose"]


@pytest.mark.parametrize(
    ("text", "labels"),
    [
        ("", []),
        ("edge", ["edge"]),
        (" edge,gpu ,, edge\tcompute ", ["edge", "gpu", "compute"]),
    ],
)
def test_labels_are_split_on_commas_and_spaces_once_each(
    text: str, labels: list[str]
) -> None:
    assert parse_labels(text) == labels


# -- who may


def test_non_operators_see_no_forms(bob: Client, host: Node) -> None:
    assert "Register a node" not in bob.get("/hosts/").content.decode()
    page = bob.get("/hosts/host-17/").content.decode()
    assert "Issue an enrollment token" not in page
    assert "Delete node" not in page


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/hosts/register"),
        ("post", "/hosts/host-17/enrollment-token"),
        ("post", "/hosts/host-17/cancel-enrollment"),
        ("post", "/hosts/host-17/revoke-tokens"),
        ("get", "/hosts/host-17/delete"),
        ("post", "/hosts/host-17/delete"),
    ],
)
def test_non_operators_get_403(bob: Client, host: Node, method: str, path: str) -> None:
    response = getattr(bob, method)(path, {"name": "other", "labels": "edge"})
    assert response.status_code == 403
    assert b"Only operators can manage nodes." in response.content
    assert list(Node.objects.values_list("name", flat=True)) == ["host-17"]
    assert not EnrollmentToken.objects.exists()


@pytest.mark.parametrize(
    "path",
    [
        "/hosts/register",
        "/hosts/host-17/enrollment-token",
        "/hosts/host-17/cancel-enrollment",
        "/hosts/host-17/revoke-tokens",
        "/hosts/host-17/delete",
    ],
)
def test_anonymous_visitors_are_sent_to_log_in(
    client: Client, host: Node, path: str
) -> None:
    response = client.post(path, {"name": "other"})
    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next={path}"
    assert Node.objects.count() == 1
    assert not EnrollmentToken.objects.exists()


def test_posts_need_the_csrf_token(host: Node) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(make_user("alice", staff=True))
    assert client.post("/hosts/register", {"name": "other"}).status_code == 403
    assert client.post("/hosts/host-17/delete").status_code == 403
    assert Node.objects.count() == 1


# -- enrollment tokens


def test_issued_token_is_shown_once_and_enrolls_the_node(
    alice: Client, host: Node
) -> None:
    response = alice.post("/hosts/host-17/enrollment-token")
    assert "no-store" in response["Cache-Control"]
    page = response.content.decode()
    assert "shown only once" in page
    assert "valid once" in page
    assert "control_plane_url: http://testserver\n" in page
    assert "control_plane_enrollment_token_file: /etc/firework/enrollment-token" in page
    assert "node_name: host-17\nnode_names: [general-purpose]\n" in page
    token = issue(alice)
    assert EnrollmentToken.objects.count() == 2
    assert not EnrollmentToken.objects.filter(token_sha256__contains=token).exists()

    enrolled = Client().post(
        "/api/v1/nodes/host-17/enroll",
        {"enrollment_token": token},
        content_type="application/json",
    )
    assert enrolled.status_code == 201
    assert enrolled.json()["token"].startswith("fwn_")
    again = Client().post(
        "/api/v1/nodes/host-17/enroll",
        {"enrollment_token": token},
        content_type="application/json",
    )
    assert again.status_code == 403

    later = alice.get("/hosts/host-17/").content.decode()
    assert token not in later
    assert not TOKEN.search(later)
    assert token not in str(dict(alice.session))


def test_token_is_neither_in_the_url_nor_logged(
    alice: Client, host: Node, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    response = alice.post("/hosts/host-17/enrollment-token")
    token = TOKEN.search(response.content.decode())
    assert token is not None
    assert response.status_code == 200  # shown in this answer, no redirect
    assert token.group(0) not in caplog.text
    assert "enrollment token issued from the dashboard node=host-17" in caplog.text


def enrolls(token: str) -> bool:
    """Whether the agent of host-17 gets a node token for ``token``."""
    response = Client().post(
        "/api/v1/nodes/host-17/enroll",
        {"enrollment_token": token},
        content_type="application/json",
    )
    assert response.status_code in (201, 403)
    return response.status_code == 201


def test_a_new_token_cancels_the_unused_one(alice: Client, host: Node) -> None:
    """A re-sent form, or a second click, leaves only the token shown last working."""
    first = issue(alice)
    second = issue(alice)
    assert not enrolls(first)
    assert enrolls(second)


def test_the_node_page_shows_the_unused_token_and_cancels_it(
    alice: Client, host: Node
) -> None:
    before = alice.get("/hosts/host-17/").content.decode()
    assert "An unused enrollment token" not in before
    assert "Cancel the unused enrollment token" not in before

    token = issue(alice)
    page = alice.get("/hosts/host-17/").content.decode()
    assert "An unused enrollment token, issued" in page
    assert "Cancel the unused enrollment token" in page
    assert token not in page

    response = alice.post("/hosts/host-17/cancel-enrollment", follow=True)
    page = response.content.decode()
    assert "Cancelled the unused enrollment token of host-17." in page
    assert "An unused enrollment token" not in page
    assert not enrolls(token)

    again = alice.post("/hosts/host-17/cancel-enrollment", follow=True)
    assert "host-17 had no unused enrollment token." in again.content.decode()


def test_a_used_token_is_not_shown_as_pending(alice: Client, host: Node) -> None:
    assert enrolls(issue(alice))
    page = alice.get("/hosts/host-17/").content.decode()
    assert "An unused enrollment token" not in page


def test_issuing_for_an_unknown_node_is_404(alice: Client) -> None:
    assert alice.post("/hosts/ghost/enrollment-token").status_code == 404


def test_issuing_needs_a_post(alice: Client, host: Node) -> None:
    assert alice.get("/hosts/host-17/enrollment-token").status_code == 405
    assert not EnrollmentToken.objects.exists()


# -- revoking and deleting


def test_revoke_stops_the_node_tokens(alice: Client, host: Node) -> None:
    tokens = [issue_node_token(host), issue_node_token(host)]
    status_url = "/api/v1/nodes/host-17/status"
    auth = {"Authorization": f"Bearer {tokens[0]}"}
    before = Client().post(
        status_url, {}, content_type="application/json", headers=auth
    )
    assert before.status_code != 401

    response = alice.post("/hosts/host-17/revoke-tokens")
    assert response.status_code == 302
    assert response["Location"] == "/hosts/host-17/"
    assert (
        "Revoked 2 node tokens of host-17."
        in alice.get("/hosts/host-17/").content.decode()
    )
    assert not NodeToken.objects.filter(revoked_at__isnull=True).exists()
    for token in tokens:
        auth = {"Authorization": f"Bearer {token}"}
        after = Client().post(
            status_url, {}, content_type="application/json", headers=auth
        )
        assert after.status_code == 401

    alice.post("/hosts/host-17/revoke-tokens")
    assert "Revoked 0 node tokens" in alice.get("/hosts/host-17/").content.decode()


def test_delete_asks_first_then_deletes(alice: Client, host: Node) -> None:
    issue_node_token(host)
    question = alice.get("/hosts/host-17/delete")
    assert question.status_code == 200
    assert "Delete node host-17?" in question.content.decode()
    assert Node.objects.exists()

    response = alice.post("/hosts/host-17/delete")
    assert response.status_code == 302
    assert response["Location"] == "/hosts/"
    assert not Node.objects.exists()
    assert not NodeToken.objects.exists()
    assert "Node host-17 deleted" in alice.get("/hosts/").content.decode()
    assert alice.post("/hosts/host-17/delete").status_code == 404
