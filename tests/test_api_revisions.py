"""``/api/v1/revisions/`` and runs: list, detail, trigger, re-run, permissions."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from controlplane.models import ConfigRepository, NodeConfigOutput, Revision
from tests.apisupport import (
    Endpoint,
    Personas,
    make_repository,
    session_client,
    token_client,
)
from tests.celerysupport import QueuedTask, TaskQueue, celery_enqueues_only

LIST = "/api/v1/revisions/"
SHA = "3f786850e387550fdab836ed7e6dc881de23001b"
OTHER_SHA = "89e6c98d92887913cadf06b2adb97f26cde4849b"


def detail(revision: Revision) -> str:
    return f"{LIST}{revision.pk}/"


def runs(repository: ConfigRepository) -> str:
    return f"/api/v1/repositories/{repository.pk}/runs/"


@pytest.fixture
def alice(people: Personas) -> APIClient:
    return token_client(people.alice_token)


@pytest.fixture
def bob(people: Personas) -> APIClient:
    return token_client(people.bob_token)


@pytest.fixture
def repo(db: None) -> ConfigRepository:
    return make_repository("ops")


@pytest.fixture
def finished(repo: ConfigRepository) -> Revision:
    """A failed run with errors, a warning, output and timings."""
    started = timezone.now() - timedelta(seconds=90)
    revision = Revision.objects.create(
        repository=repo,
        ref="main",
        commit_sha=SHA,
        trigger=Revision.Trigger.WEBHOOK,
        delivery_id="d-1",
        status=Revision.Status.FAILED,
        started_at=started,
        finished_at=started + timedelta(seconds=2.5),
        attempts=1,
        errors=[
            {"file": "services/web.yaml", "service": "web", "message": "missing image"}
        ],
        warnings=[
            {
                "file": "services/api.yaml",
                "service": "api",
                "message": "unknown field source_image ignored",
            }
        ],
        failure="",
    )
    NodeConfigOutput.objects.create(
        revision=revision,
        node_type="general-purpose",
        content="node: general-purpose\nservices: []\n",
        sha256="a" * 64,
        object_key="nodes/general-purpose.yaml",
        etag='"0123"',
        services=["api", "web"],
    )
    return revision


@pytest.fixture
def task_queue() -> Iterator[TaskQueue]:
    with celery_enqueues_only() as queue:
        yield queue


ENDPOINTS = [
    Endpoint("list", "get", lambda o: LIST, 200),
    Endpoint("detail", "get", lambda o: detail(o["revision"]), 200),
    Endpoint(
        "create",
        "post",
        lambda o: LIST,
        202,
        lambda o: {"repository": o["revision"].repository_id, "commit_sha": SHA},
    ),
    Endpoint(
        "repository_runs",
        "post",
        lambda o: runs(o["revision"].repository),
        202,
        lambda o: {},
    ),
    Endpoint("rerun", "post", lambda o: f"{detail(o['revision'])}rerun/", 202),
]
by_name = pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.name)
writes_by_name = pytest.mark.parametrize(
    "endpoint", [e for e in ENDPOINTS if e.writes], ids=lambda e: e.name
)


# --- the auth matrix -------------------------------------------------------


@by_name
def test_anonymous_charlie_gets_401(endpoint: Endpoint, finished: Revision):
    response = endpoint.call(APIClient(), {"revision": finished})

    assert response.status_code == 401
    assert Revision.objects.count() == 1


@by_name
def test_operator_alice_may_do_it(
    endpoint: Endpoint, alice: APIClient, finished: Revision
):
    response = endpoint.call(alice, {"revision": finished})

    assert response.status_code == endpoint.ok, response.content


@by_name
def test_read_only_bob_may_read_but_not_run(
    endpoint: Endpoint, bob: APIClient, finished: Revision
):
    response = endpoint.call(bob, {"revision": finished})

    assert response.status_code == (403 if endpoint.writes else 200)
    assert Revision.objects.count() == 1


@by_name
def test_deleted_token_gets_401(
    endpoint: Endpoint, people: Personas, finished: Revision
):
    client = token_client(people.alice_token)
    Token.objects.filter(user=people.alice).delete()

    response = endpoint.call(client, {"revision": finished})

    assert response.status_code == 401
    assert Revision.objects.count() == 1


@by_name
def test_token_of_deactivated_user_gets_401(
    endpoint: Endpoint, people: Personas, finished: Revision
):
    User.objects.filter(pk=people.alice.pk).update(is_active=False)

    response = endpoint.call(token_client(people.alice_token), {"revision": finished})

    assert response.status_code == 401


@writes_by_name
def test_session_run_needs_the_csrf_token(
    endpoint: Endpoint, people: Personas, finished: Revision
):
    refused = endpoint.call(
        session_client(people.alice, with_csrf=False), {"revision": finished}
    )
    accepted = endpoint.call(
        session_client(people.alice, with_csrf=True), {"revision": finished}
    )

    assert refused.status_code == 403
    assert accepted.status_code == 202
    assert Revision.objects.count() == 2


# --- list and detail --------------------------------------------------------


def test_list_is_newest_first_with_counts_and_duration(
    bob: APIClient, finished: Revision, repo: ConfigRepository
):
    newer = Revision.objects.create(repository=repo, ref="main", trigger="api")

    body = bob.get(LIST).json()

    assert [r["id"] for r in body["results"]] == [newer.pk, finished.pk]
    old = body["results"][1]
    assert old["duration_seconds"] == 2.5
    assert (old["error_count"], old["warning_count"]) == (1, 1)
    assert old["repository_name"] == "ops"
    assert old["url"] == f"http://testserver{detail(finished)}"
    assert body["results"][0]["duration_seconds"] is None
    assert "errors" not in old  # the list stays small; details have them


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("status=failed", ["failed"]),
        ("status=queued", ["queued-ops", "queued-web"]),
        ("trigger=webhook", ["failed"]),
        ("trigger=api", ["queued-ops", "queued-web"]),
        ("repository={web}", ["queued-web"]),
        ("repository={web}&status=failed", []),
        (f"commit_sha={SHA.upper()}", ["failed"]),
        ("repository=999999", []),
    ],
)
def test_list_filters(
    bob: APIClient,
    finished: Revision,
    repo: ConfigRepository,
    query: str,
    expected: list[str],
):
    web = make_repository("web")
    names = {finished.pk: "failed"}
    for repository in (repo, web):
        # the web repository's run comes last, so it supersedes nothing of ops'
        run = Revision.objects.create(repository=repository, ref="main", trigger="api")
        names[run.pk] = f"queued-{repository.name}"

    body = bob.get(f"{LIST}?{query.format(web=web.pk)}").json()

    assert sorted(names[r["id"]] for r in body["results"]) == expected


@pytest.mark.parametrize(
    "query",
    [
        "status=bogus",
        "trigger=cron",
        "repository=abc",
        "repository=0",
        "commit_sha=xyz",
    ],
)
def test_invalid_filter_is_a_400(bob: APIClient, query: str):
    response = bob.get(f"{LIST}?{query}")

    assert response.status_code == 400
    assert query.partition("=")[0] in response.json()


def test_detail_has_errors_warnings_outputs_and_timing(
    bob: APIClient, finished: Revision
):
    body = bob.get(detail(finished)).json()

    assert body["status"] == "failed"
    assert (body["commit_sha"], body["ref"], body["trigger"]) == (
        SHA,
        "main",
        "webhook",
    )
    assert body["duration_seconds"] == 2.5
    assert body["errors"] == [
        {"file": "services/web.yaml", "service": "web", "message": "missing image"}
    ]
    assert body["warnings"][0]["message"] == "unknown field source_image ignored"
    assert body["outputs"] == [
        {
            "node_type": "general-purpose",
            "object_key": "nodes/general-purpose.yaml",
            "etag": '"0123"',
            "sha256": "a" * 64,
            "services": ["api", "web"],
        }
    ]
    assert body["failure"] == ""
    assert body["deleted_keys"] == []


def test_detail_shows_the_failure_text(bob: APIClient, repo: ConfigRepository):
    revision = Revision.objects.create(
        repository=repo,
        ref="main",
        trigger="manual",
        status=Revision.Status.FAILED,
        failure="cloning https://github.com/example/ops.git: not found",
    )

    body = bob.get(detail(revision)).json()

    assert body["failure"] == "cloning https://github.com/example/ops.git: not found"
    assert body["outputs"] == []


def test_unknown_revision_is_a_json_404(bob: APIClient):
    response = bob.get(f"{LIST}999999/")

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"


# --- requesting runs --------------------------------------------------------


def test_run_for_a_commit_is_queued_for_the_operator(
    alice: APIClient, people: Personas, repo: ConfigRepository
):
    response = alice.post(
        LIST, {"repository": repo.pk, "commit_sha": SHA}, format="json"
    )

    assert response.status_code == 202
    revision = Revision.objects.get()
    assert (revision.repository, revision.commit_sha, revision.ref) == (
        repo,
        SHA,
        "main",
    )
    assert revision.status == Revision.Status.QUEUED
    assert revision.trigger == Revision.Trigger.API
    assert revision.requested_by == people.alice
    body = response.json()
    assert body["id"] == revision.pk
    assert body["requested_by"] == "alice"
    assert response["Location"] == f"http://testserver{detail(revision)}"


def test_run_of_the_branch_head_through_the_repository(
    alice: APIClient, repo: ConfigRepository
):
    response = alice.post(runs(repo), {"ref": "refs/heads/release/1.2"}, format="json")

    assert response.status_code == 202
    revision = Revision.objects.get()
    assert (revision.ref, revision.commit_sha) == ("release/1.2", "")


def test_run_without_body_takes_the_repository_branch(
    alice: APIClient, repo: ConfigRepository
):
    response = alice.post(runs(repo))

    assert response.status_code == 202
    assert Revision.objects.get().ref == "main"


def test_upper_case_sha_is_stored_lower_case(alice: APIClient, repo: ConfigRepository):
    alice.post(runs(repo), {"commit_sha": SHA.upper()}, format="json")

    assert Revision.objects.get().commit_sha == SHA


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("commit_sha", SHA[:12]),
        ("commit_sha", SHA + "0"),
        ("commit_sha", "g" * 40),
        ("commit_sha", 12345),
        ("ref", "a..b"),
        ("ref", "--upload-pack=x"),
        ("ref", "main branch"),
        ("ref", "x" * 256),
        ("ref", ["main"]),
    ],
)
def test_invalid_run_request_is_a_400(
    alice: APIClient, repo: ConfigRepository, field: str, value: Any
):
    via_repository = alice.post(runs(repo), {field: value}, format="json")
    via_revisions = alice.post(
        LIST, {"repository": repo.pk, field: value}, format="json"
    )

    assert (via_repository.status_code, via_revisions.status_code) == (400, 400)
    assert field in via_repository.json()
    assert field in via_revisions.json()
    assert not Revision.objects.exists()


@pytest.mark.parametrize("repository", [999999, "ops", None])
def test_run_of_unknown_repository_is_a_400(alice: APIClient, repository: Any):
    response = alice.post(LIST, {"repository": repository}, format="json")

    assert response.status_code == 400
    assert "repository" in response.json()


def test_runs_of_unknown_repository_is_a_404(alice: APIClient, db: None):
    response = alice.post("/api/v1/repositories/999999/runs/", {}, format="json")

    assert response.status_code == 404


def test_inactive_repository_is_not_run(alice: APIClient, finished: Revision):
    ConfigRepository.objects.update(active=False)

    responses = [
        alice.post(runs(finished.repository)),
        alice.post(LIST, {"repository": finished.repository_id}, format="json"),
        alice.post(f"{detail(finished)}rerun/"),
    ]

    assert [r.status_code for r in responses] == [409, 409, 409]
    assert "inactive" in responses[0].json()["detail"]
    assert Revision.objects.count() == 1


def test_new_run_supersedes_a_queued_one(alice: APIClient, repo: ConfigRepository):
    alice.post(runs(repo), {"commit_sha": SHA}, format="json")
    alice.post(runs(repo), {"commit_sha": OTHER_SHA}, format="json")

    statuses = dict(Revision.objects.values_list("commit_sha", "status"))
    assert statuses == {SHA: "superseded", OTHER_SHA: "queued"}


def test_rerun_queues_the_same_repository_ref_and_commit(
    alice: APIClient, people: Personas, finished: Revision
):
    response = alice.post(f"{detail(finished)}rerun/")

    assert response.status_code == 202
    rerun = Revision.objects.get(pk=response.json()["id"])
    assert rerun.pk != finished.pk
    assert (rerun.repository_id, rerun.ref, rerun.commit_sha) == (
        finished.repository_id,
        "main",
        SHA,
    )
    assert (rerun.trigger, rerun.status) == ("api", "queued")
    assert rerun.requested_by == people.alice
    finished.refresh_from_db()
    assert finished.status == Revision.Status.FAILED  # the record stays as it was


def test_rerun_of_unknown_revision_is_a_404(alice: APIClient, db: None):
    assert alice.post(f"{LIST}999999/rerun/").status_code == 404


def test_run_is_handed_to_celery_not_run_in_the_request(
    alice: APIClient,
    repo: ConfigRepository,
    task_queue: TaskQueue,
    django_capture_on_commit_callbacks: Any,
):
    from controlplane.tasks import run_revision

    with django_capture_on_commit_callbacks(execute=True):
        response = alice.post(runs(repo), {"commit_sha": SHA}, format="json")

    revision = Revision.objects.get()
    assert response.json()["status"] == "queued"
    assert task_queue.drain() == [QueuedTask(run_revision.name, [revision.pk])]
    assert Revision.objects.get().status == Revision.Status.QUEUED


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/repositories/{repo}/runs.json",
        "/api/v1/revisions/{revision}/rerun.json",
    ],
    ids=["runs", "rerun"],
)
def test_format_suffix_routes_of_actions_work(
    alice: APIClient, finished: Revision, path: str
):
    url = path.format(repo=finished.repository_id, revision=finished.pk)

    response = alice.post(url, {}, format="json")

    assert response.status_code == 202
    assert response.json()["status"] == "queued"
