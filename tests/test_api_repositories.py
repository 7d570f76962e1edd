"""``/api/v1/repositories/``: list, detail, create, update, delete, permissions."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from controlplane.models import ConfigRepository, Revision
from tests.apisupport import (
    Endpoint,
    Personas,
    make_repository,
    session_client,
    token_client,
)

LIST = "/api/v1/repositories/"
SECRET_VALUE = "hook-secret-value-5f1c"
TOKEN_VALUE = "ghp-token-value-77aa"


def detail(repository: ConfigRepository) -> str:
    return f"{LIST}{repository.pk}/"


def new_repository(**fields: Any) -> dict[str, Any]:
    body = {
        "name": "platform",
        "clone_url": "https://github.com/example/platform.git",
        "github_full_name": "example/platform",
        "branch": "main",
        "config_subdir": "services",
        "webhook_secret_env": "FIREWORK_PLATFORM_SECRET",
        "access_token_env": "FIREWORK_PLATFORM_TOKEN",
    }
    return body | fields


@pytest.fixture
def alice(people: Personas) -> APIClient:
    return token_client(people.alice_token)


@pytest.fixture
def bob(people: Personas) -> APIClient:
    return token_client(people.bob_token)


@pytest.fixture
def repo(db: None) -> ConfigRepository:
    return make_repository("ops")


@pytest.fixture(autouse=True)
def no_repository_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FIREWORK_PLATFORM_SECRET", "FIREWORK_PLATFORM_TOKEN"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(f"{name}_FILE", raising=False)


ENDPOINTS = [
    Endpoint("list", "get", lambda o: LIST, 200),
    Endpoint("detail", "get", lambda o: detail(o["repo"]), 200),
    Endpoint("create", "post", lambda o: LIST, 201, lambda o: new_repository()),
    Endpoint(
        "update",
        "put",
        lambda o: detail(o["repo"]),
        200,
        lambda o: new_repository(name="ops"),
    ),
    Endpoint(
        "partial_update",
        "patch",
        lambda o: detail(o["repo"]),
        200,
        lambda o: {"active": False},
    ),
    Endpoint("delete", "delete", lambda o: detail(o["repo"]), 204),
]
WRITES = [e for e in ENDPOINTS if e.writes]
by_name = pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.name)
writes_by_name = pytest.mark.parametrize("endpoint", WRITES, ids=lambda e: e.name)


# --- the auth matrix -------------------------------------------------------


@by_name
def test_anonymous_charlie_gets_401(endpoint: Endpoint, repo: ConfigRepository):
    response = endpoint.call(APIClient(), {"repo": repo})

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"
    assert ConfigRepository.objects.get(pk=repo.pk).active


@by_name
def test_operator_alice_may_do_it(
    endpoint: Endpoint, alice: APIClient, repo: ConfigRepository
):
    response = endpoint.call(alice, {"repo": repo})

    assert response.status_code == endpoint.ok, response.content


@by_name
def test_read_only_bob_may_read_but_not_write(
    endpoint: Endpoint, bob: APIClient, repo: ConfigRepository
):
    response = endpoint.call(bob, {"repo": repo})

    if endpoint.writes:
        assert response.status_code == 403
        assert "operator" in response.json()["detail"]
        assert list(ConfigRepository.objects.values_list("name", "active")) == [
            ("ops", True)
        ]
    else:
        assert response.status_code == 200


@by_name
def test_deleted_token_gets_401(
    endpoint: Endpoint, people: Personas, repo: ConfigRepository
):
    client = token_client(people.alice_token)
    Token.objects.filter(user=people.alice).delete()

    response = endpoint.call(client, {"repo": repo})

    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid token."}


@by_name
def test_token_of_deactivated_user_gets_401(
    endpoint: Endpoint, people: Personas, repo: ConfigRepository
):
    User.objects.filter(pk=people.alice.pk).update(is_active=False)

    response = endpoint.call(token_client(people.alice_token), {"repo": repo})

    assert response.status_code == 401


@writes_by_name
def test_session_write_without_csrf_token_is_refused(
    endpoint: Endpoint, people: Personas, repo: ConfigRepository
):
    client = session_client(people.alice, with_csrf=False)

    response = endpoint.call(client, {"repo": repo})

    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]


@by_name
def test_session_with_csrf_token_works_like_a_token(
    endpoint: Endpoint, people: Personas, repo: ConfigRepository
):
    client = session_client(people.alice, with_csrf=True)

    response = endpoint.call(client, {"repo": repo})

    assert response.status_code == endpoint.ok, response.content


@pytest.mark.parametrize(
    ("staff", "superuser", "allowed"),
    [(True, False, True), (False, True, True), (False, False, False)],
    ids=["staff", "superuser", "plain"],
)
def test_staff_and_superusers_are_operators(
    db: None, staff: bool, superuser: bool, allowed: bool
):
    user = User.objects.create_user("dave", is_staff=staff, is_superuser=superuser)
    client = token_client(Token.objects.create(user=user).key)

    response = client.post(LIST, new_repository(), format="json")

    assert response.status_code == (201 if allowed else 403)


# --- list and detail --------------------------------------------------------


def test_list_is_paginated_and_sorted_by_name(bob: APIClient):
    for name in ("zeta", "alpha", "mid"):
        make_repository(name)

    body = bob.get(LIST).json()

    assert body["count"] == 3
    assert [r["name"] for r in body["results"]] == ["alpha", "mid", "zeta"]
    assert body["next"] is None


def test_detail_shows_the_repository(bob: APIClient):
    repo = make_repository(
        "ops", config_subdir="services", webhook_secret_env="FIREWORK_OPS_SECRET"
    )

    body = bob.get(detail(repo)).json()

    assert body == {
        "id": repo.pk,
        "url": f"http://testserver{detail(repo)}",
        "name": "ops",
        "clone_url": "https://github.com/example/ops.git",
        "github_full_name": "example/ops",
        "branch": "main",
        "config_subdir": "services",
        "webhook_secret_env": "FIREWORK_OPS_SECRET",
        "webhook_secret_configured": False,
        "access_token_env": "",
        "access_token_configured": False,
        "active": True,
        "allow_empty": False,
        "created_at": body["created_at"],
        "updated_at": body["updated_at"],
    }


def test_unknown_repository_is_a_json_404(bob: APIClient):
    response = bob.get(f"{LIST}999999/")

    assert response.status_code == 404
    assert response.json() == {"detail": "No ConfigRepository matches the given query."}


def test_secret_values_are_never_returned_only_whether_they_are_set(
    bob: APIClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    monkeypatch.setenv("FIREWORK_PLATFORM_SECRET", SECRET_VALUE)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN_VALUE + "\n")
    monkeypatch.setenv("FIREWORK_PLATFORM_TOKEN_FILE", str(token_file))
    repo = make_repository(
        "platform",
        webhook_secret_env="FIREWORK_PLATFORM_SECRET",
        access_token_env="FIREWORK_PLATFORM_TOKEN",
    )

    responses = [bob.get(LIST), bob.get(detail(repo))]

    for response in responses:
        assert SECRET_VALUE.encode() not in response.content
        assert TOKEN_VALUE.encode() not in response.content
    body = responses[1].json()
    assert body["webhook_secret_configured"] is True
    assert body["access_token_configured"] is True


def test_unreadable_secret_counts_as_unset_and_is_not_logged(
    bob: APIClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    # Both NAME and NAME_FILE set: the secret cannot be used.
    monkeypatch.setenv("FIREWORK_PLATFORM_SECRET", SECRET_VALUE)
    monkeypatch.setenv("FIREWORK_PLATFORM_SECRET_FILE", "/nonexistent")
    repo = make_repository("platform", webhook_secret_env="FIREWORK_PLATFORM_SECRET")

    with caplog.at_level(logging.WARNING):
        response = bob.get(detail(repo))

    assert response.status_code == 200
    assert response.json()["webhook_secret_configured"] is False
    assert "FIREWORK_PLATFORM_SECRET" in caplog.text
    assert SECRET_VALUE not in caplog.text
    assert SECRET_VALUE.encode() not in response.content


# --- create, update, delete -------------------------------------------------


def test_create_stores_the_repository_and_links_to_it(alice: APIClient):
    response = alice.post(LIST, new_repository(), format="json")

    assert response.status_code == 201
    repo = ConfigRepository.objects.get(name="platform")
    assert response["Location"] == f"http://testserver{detail(repo)}"
    assert (repo.clone_url, repo.branch, repo.config_subdir) == (
        "https://github.com/example/platform.git",
        "main",
        "services",
    )
    assert repo.webhook_secret_env == "FIREWORK_PLATFORM_SECRET"
    assert repo.active


def test_create_normalises_branch_and_subdirectory(alice: APIClient):
    body = new_repository(branch="refs/heads/release/2.0", config_subdir="svc/")

    response = alice.post(LIST, body, format="json")

    assert response.status_code == 201, response.content
    assert response.json()["branch"] == "release/2.0"
    assert response.json()["config_subdir"] == "svc"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "Not A Slug"),
        ("name", ""),
        ("clone_url", "https://user:hunter2@github.com/example/x.git"),
        ("clone_url", "https://ghp_abc@github.com/example/x.git"),
        ("clone_url", "relative/path"),
        ("clone_url", "ftp://example.com/x.git"),
        ("clone_url", "https://github.com/x.git\n--upload-pack=evil"),
        ("branch", "a..b"),
        ("branch", "-rf"),
        ("branch", "with space"),
        ("branch", "topic.lock"),
        ("branch", "x~1"),
        ("branch", ""),
        ("config_subdir", "../etc"),
        ("config_subdir", "a/./b"),
        ("config_subdir", "/etc"),
        ("config_subdir", "a\\b"),
        ("webhook_secret_env", "lower_case"),
        ("webhook_secret_env", "AWS_SECRET_ACCESS_KEY"),
        ("access_token_env", "DJANGO_SECRET_KEY"),
        ("access_token_env", "DATABASE_URL"),
        ("access_token_env", "FIREWORK_ADMIN_PASSWORD"),
        ("github_full_name", "no-slash"),
        ("github_full_name", "a/b/c"),
        ("active", "maybe"),
    ],
)
def test_invalid_field_is_a_400_naming_it(alice: APIClient, field: str, value: str):
    response = alice.post(LIST, new_repository(**{field: value}), format="json")

    assert response.status_code == 400
    assert list(response.json()) == [field]
    assert not ConfigRepository.objects.exists()


def test_duplicate_name_is_a_400(alice: APIClient, repo: ConfigRepository):
    response = alice.post(LIST, new_repository(name="ops"), format="json")

    assert response.status_code == 400
    assert "name" in response.json()
    assert ConfigRepository.objects.count() == 1


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[]", b'"text"', b"\xff\xfe"],
    ids=["malformed", "list", "string", "not-utf8"],
)
def test_malformed_body_is_a_400_not_a_500(alice: APIClient, body: bytes):
    response = alice.post(LIST, body, content_type="application/json")

    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"


def test_put_replaces_and_patch_changes_one_field(
    alice: APIClient, repo: ConfigRepository
):
    put = alice.put(
        detail(repo), new_repository(name="ops", branch="trunk"), format="json"
    )
    patch = alice.patch(detail(repo), {"allow_empty": True}, format="json")

    assert (put.status_code, patch.status_code) == (200, 200)
    repo.refresh_from_db()
    assert (repo.name, repo.branch, repo.config_subdir) == ("ops", "trunk", "services")
    assert repo.allow_empty is True


def test_created_at_is_read_only(alice: APIClient, repo: ConfigRepository):
    before = repo.created_at

    alice.patch(detail(repo), {"created_at": "2001-01-01T00:00:00Z"}, format="json")

    repo.refresh_from_db()
    assert repo.created_at == before


def test_delete_removes_the_repository_and_its_runs(
    alice: APIClient, repo: ConfigRepository
):
    Revision.objects.create(repository=repo, ref="main", trigger="api")

    response = alice.delete(detail(repo))

    assert response.status_code == 204
    assert not ConfigRepository.objects.exists()
    assert not Revision.objects.exists()
