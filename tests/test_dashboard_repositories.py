"""The home page (repositories and their last runs), a repository's page, Run now."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone
from pytest_django import Settings

from controlplane.models import Revision
from tests.dashboard_data import (
    SHA_A,
    SHA_B,
    make_repository,
    make_revision,
    make_user,
    queued_tasks,
    tasks_queued_not_run,
)

CaptureCallbacks = Callable[..., AbstractContextManager[list[Callable[[], Any]]]]


@pytest.fixture(autouse=True)
def fast_hashing(settings: Settings) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def alice(db: None) -> User:
    """Staff: an operator."""
    return make_user("alice", staff=True)


@pytest.fixture
def bob(db: None) -> User:
    """Logged in, but neither staff nor in the operators group."""
    return make_user("bob")


@pytest.fixture
def charlie(db: None) -> User:
    """An operator by group membership, not staff."""
    return make_user("charlie", operator=True)


@pytest.fixture
def queue_only() -> Iterator[None]:
    with tasks_queued_not_run():
        yield


def test_home_lists_each_repository_with_its_last_run(
    client: Client, alice: User
) -> None:
    ops = make_repository("ops-config", config_subdir="firework")
    make_repository("lab-config", branch="develop", config_subdir="", active=False)
    old = timezone.now() - timedelta(hours=3)
    make_revision(ops, Revision.Status.SUCCEEDED, sha=SHA_A, queued=old)
    last = make_revision(
        ops, Revision.Status.FAILED, sha=SHA_B, took=timedelta(seconds=42)
    )
    client.force_login(alice)

    response = client.get("/")

    assert response.status_code == 200
    rows = {row.repository.name: row for row in response.context["rows"]}
    assert list(rows) == ["lab-config", "ops-config"]
    assert rows["ops-config"].last_run.revision == last
    assert rows["ops-config"].last_run.duration == "42.0 s"
    assert rows["ops-config"].last_success.revision.commit_sha == SHA_A
    assert rows["lab-config"].last_run is None
    html = response.content.decode()
    for text in (
        '<span class="badge status-failed">failed</span>',
        f'<code title="{SHA_B}">{SHA_B[:12]}</code>',
        "42.0 s",
        "<code>develop</code>",
        "<code>firework</code>",
        '<span class="badge inactive">inactive</span>',
        "never run",
        f'href="/revisions/{last.pk}/"',
        "5\xa0minutes ago",
    ):
        assert text in html, text


def test_home_shows_absolute_time_of_the_last_run(client: Client, alice: User) -> None:
    ops = make_repository("ops-config")
    run = make_revision(ops, Revision.Status.SUCCEEDED)
    client.force_login(alice)
    html = client.get("/").content.decode()
    absolute = timezone.localtime(run.queued_at).strftime("%Y-%m-%d %H:%M:%S")
    assert f'title="{absolute} UTC"' in html


def test_a_run_queued_seconds_ago_was_queued_just_now(
    client: Client, alice: User
) -> None:
    make_revision(
        make_repository("ops-config"),
        Revision.Status.QUEUED,
        took=None,
        queued=timezone.now() - timedelta(seconds=20),
    )
    client.force_login(alice)
    html = client.get("/").content.decode()
    assert ">just now</time>" in html
    assert "0\xa0minutes" not in html


def test_home_without_repositories_says_how_to_add_one(
    client: Client, alice: User
) -> None:
    client.force_login(alice)
    response = client.get("/")
    assert response.status_code == 200
    assert b"No config repository is registered yet." in response.content
    assert b"/admin/controlplane/configrepository/add/" in response.content


def test_run_now_button_is_shown_to_operators_only(
    client: Client, alice: User, bob: User, charlie: User
) -> None:
    make_repository("ops-config")
    make_repository("lab-config", active=False)
    for user, shown in ((alice, 1), (charlie, 1), (bob, 0)):
        client.force_login(user)
        html = client.get("/").content.decode()
        # One button for the active repository, none for the inactive one.
        assert html.count('action="/repositories/ops-config/run"') == shown, user
        assert 'action="/repositories/lab-config/run"' not in html


@pytest.mark.usefixtures("queue_only")
@pytest.mark.parametrize("operator", ["alice", "charlie"])
def test_run_now_queues_a_manual_run_for_an_operator(
    client: Client,
    django_capture_on_commit_callbacks: CaptureCallbacks,
    request: pytest.FixtureRequest,
    operator: str,
) -> None:
    user: User = request.getfixturevalue(operator)
    repo = make_repository("ops-config", branch="release")
    client.force_login(user)

    # The test's transaction never commits: run what would run on commit.
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/repositories/ops-config/run", follow=True)

    revision = Revision.objects.get()
    assert (revision.repository, revision.ref) == (repo, "release")
    assert revision.trigger == Revision.Trigger.MANUAL
    assert revision.requested_by == user
    assert revision.status == Revision.Status.QUEUED
    assert queued_tasks() == [("controlplane.tasks.run_revision", [revision.pk])]
    assert response.redirect_chain == [(f"/revisions/{revision.pk}/", 302)]
    html = response.content.decode()
    assert f"Run #{revision.pk} of ops-config queued." in html
    assert f"<dd>{user.username}</dd>" in html


@pytest.mark.usefixtures("queue_only")
def test_run_now_is_forbidden_to_non_operators(
    client: Client, bob: User, django_capture_on_commit_callbacks: CaptureCallbacks
) -> None:
    make_repository("ops-config")
    client.force_login(bob)

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/repositories/ops-config/run")

    assert response.status_code == 403
    assert b"Only operators can request runs." in response.content
    assert not Revision.objects.exists()
    assert queued_tasks() == []


@pytest.mark.usefixtures("queue_only")
def test_run_now_needs_the_csrf_token(alice: User) -> None:
    make_repository("ops-config")
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)

    response = client.post("/repositories/ops-config/run")

    assert response.status_code == 403
    assert not Revision.objects.exists()


@pytest.mark.usefixtures("queue_only")
def test_run_now_with_the_form_token_is_accepted(alice: User) -> None:
    make_repository("ops-config")
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    page = client.get("/").content.decode()
    token = page.split('name="csrfmiddlewaretoken" value="', 2)[2].split('"', 1)[0]

    response = client.post(
        "/repositories/ops-config/run", {"csrfmiddlewaretoken": token}
    )

    assert response.status_code == 302
    assert Revision.objects.filter(trigger=Revision.Trigger.MANUAL).count() == 1


def test_run_now_refuses_reads(client: Client, alice: User) -> None:
    make_repository("ops-config")
    client.force_login(alice)
    assert client.get("/repositories/ops-config/run").status_code == 405
    assert not Revision.objects.exists()


@pytest.mark.usefixtures("queue_only")
def test_run_now_of_an_inactive_repository_is_refused(
    client: Client, alice: User
) -> None:
    make_repository("lab-config", active=False)
    client.force_login(alice)

    response = client.post("/repositories/lab-config/run", follow=True)

    assert response.redirect_chain == [("/repositories/lab-config/", 302)]
    assert b"lab-config is inactive" in response.content
    assert not Revision.objects.exists()


def test_run_now_of_an_unknown_repository_is_not_found(
    client: Client, alice: User
) -> None:
    client.force_login(alice)
    assert client.post("/repositories/nope/run").status_code == 404
    assert not Revision.objects.exists()


def test_repository_page_shows_settings_but_never_secret_values(
    client: Client, alice: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIREWORK_OPS_WEBHOOK_SECRET", "hook-secret-value")
    monkeypatch.setenv("FIREWORK_OPS_TOKEN", "token-secret-value")
    make_repository(
        "ops-config",
        clone_url="https://deploy:pasted-token-value@git.example.test/acme/ops.git",
        github_full_name="acme/ops",
    )
    client.force_login(alice)

    response = client.get("/repositories/ops-config/")

    html = response.content.decode()
    assert response.status_code == 200
    for text in (
        "<code>FIREWORK_OPS_WEBHOOK_SECRET</code>",
        "<code>FIREWORK_OPS_TOKEN</code>",
        "<code>https://***@git.example.test/acme/ops.git</code>",
        "<code>acme/ops</code>",
        "ops-config has not run yet.",
    ):
        assert text in html, text
    for secret in ("hook-secret-value", "token-secret-value", "pasted-token-value"):
        assert secret not in html


def test_repository_page_lists_only_its_own_runs(client: Client, alice: User) -> None:
    ops = make_repository("ops-config")
    lab = make_repository("lab-config")
    mine = make_revision(ops, Revision.Status.SUCCEEDED)
    make_revision(lab, Revision.Status.FAILED)
    client.force_login(alice)

    response = client.get("/repositories/ops-config/")

    assert [row.revision for row in response.context["runs"].rows] == [mine]
