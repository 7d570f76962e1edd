"""Logging in and out of the dashboard, what needs a login, and error pages."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client
from pytest_django import Settings

from controlplane.models import ConfigRepository, Revision
from tests.dashboard_data import PASSWORD, make_repository, make_revision, make_user

PAGES = ["/", "/revisions/", "/nodes/", "/repositories/ops-config/", "/revisions/1/"]


@pytest.fixture(autouse=True)
def fast_hashing(settings: Settings) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def alice(db: None) -> User:
    return make_user("alice", staff=True)


@pytest.fixture
def revision(db: None) -> Revision:
    return make_revision(make_repository("ops-config"), Revision.Status.SUCCEEDED)


@pytest.mark.parametrize("path", PAGES)
def test_every_page_sends_anonymous_visitors_to_the_login_page(
    client: Client, revision: Revision, path: str
) -> None:
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next={path}"


def test_run_now_sends_anonymous_visitors_to_the_login_page(
    client: Client, revision: Revision
) -> None:
    response = client.post("/repositories/ops-config/run")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert Revision.objects.count() == 1


def test_login_page_logs_the_operator_in(client: Client, alice: User) -> None:
    page = client.get("/accounts/login/?next=/")
    assert page.status_code == 200
    assert b'name="password"' in page.content
    response = client.post(
        "/accounts/login/", {"username": "alice", "password": PASSWORD, "next": "/"}
    )
    assert response.status_code == 302
    assert response["Location"] == "/"
    assert client.session["_auth_user_id"] == str(alice.pk)


def test_login_with_a_wrong_password_shows_an_error(
    client: Client, alice: User
) -> None:
    response = client.post(
        "/accounts/login/", {"username": "alice", "password": "nope"}
    )
    assert response.status_code == 200
    assert b"enter a correct username and password" in response.content
    assert "_auth_user_id" not in client.session


def test_logout_ends_the_session(client: Client, alice: User) -> None:
    client.force_login(alice)
    assert client.get("/").status_code == 200
    response = client.post("/accounts/logout/")
    assert response.status_code == 302
    assert client.get("/").status_code == 302


def test_navigation_links_every_section_and_marks_the_current_one(
    client: Client, alice: User
) -> None:
    client.force_login(alice)
    html = client.get("/revisions/").content.decode()
    assert '<a href="/">Repositories</a>' in html
    assert '<a href="/revisions/" aria-current="page">Revisions</a>' in html
    assert '<a href="/nodes/">Node types</a>' in html
    assert '<a href="/admin/">Admin</a>' in html


def test_admin_link_is_only_shown_to_staff(client: Client, db: None) -> None:
    client.force_login(make_user("bob"))
    html = client.get("/").content.decode()
    assert "Repositories" in html
    assert "/admin/" not in html


@pytest.mark.parametrize(
    "path",
    [
        "/repositories/no-such-repo/",
        "/revisions/999/",
        "/revisions/99999999999999999999999999/",
        "/revisions/-1/",
        "/revisions/abc/",
    ],
)
def test_unknown_objects_and_malformed_ids_are_not_found(
    client: Client, alice: User, revision: Revision, path: str
) -> None:
    client.force_login(alice)
    response = client.get(path)
    assert response.status_code == 404
    assert b"Not found" in response.content


def test_pages_refuse_writes(client: Client, alice: User, revision: Revision) -> None:
    client.force_login(alice)
    for path in ["/", "/revisions/", "/nodes/", f"/revisions/{revision.pk}/"]:
        assert client.post(path).status_code == 405, path


def test_pages_forbid_framing_and_caching(client: Client, alice: User) -> None:
    client.force_login(alice)
    response = client.get("/")
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert "no-cache" in response["Cache-Control"]


def test_healthz_answers_without_login(client: Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_healthz_refuses_writes(client: Client) -> None:
    assert client.post("/healthz").status_code == 405


def test_repositories_page_needs_no_store(
    client: Client, alice: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A broken object store only affects the node types page.
    monkeypatch.setenv("FIREWORK_STORE", "ftp")
    make_repository("ops-config")
    client.force_login(alice)
    response = client.get("/")
    assert response.status_code == 200
    assert ConfigRepository.objects.count() == 1
    assert b"ops-config" in response.content
