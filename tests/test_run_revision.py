"""Running a revision in process: real Git over HTTP, a real store, the real DB.

Runs go through the Celery task in eager mode (no broker, as in the embedded
default) or through ``controlplane.execute`` directly where one attempt at a
time is the point of the test.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.utils import timezone

from controlplane import execute
from controlplane.models import ConfigRepository, NodeConfigOutput, Revision
from controlplane.objectstore import LocalStore
from controlplane.runs import request_run
from controlplane.tasks import run_revision
from tests.conftest import S3Bucket
from tests.gitserver import GitHTTPServer, commit_tree
from tests.specrepo import base_service

pytestmark = pytest.mark.django_db

TOKEN = "ghp_run-revision-token-321"
TOKEN_ENV = "FIREWORK_TEST_OPS_TOKEN"
KEY = "nodes/general-purpose.yaml"
Status = Revision.Status


def _spec(name: str, **fields: Any) -> str:
    return yaml.safe_dump(base_service(name, **fields))


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    path = tmp_path / "origin"
    commit_tree(path, {"services/web.yaml": _spec("web")}, "web")
    return path


@pytest.fixture
def git(origin: Path) -> Iterator[GitHTTPServer]:
    with GitHTTPServer({"ops.git": origin}, token=TOKEN) as server:
        yield server


@pytest.fixture
def store_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: Any) -> Path:
    monkeypatch.setenv("FIREWORK_STORE", "local")
    monkeypatch.setenv("FIREWORK_STORE_DIR", str(tmp_path / "store"))
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    settings.FIREWORK_GIT_CACHE_DIR = tmp_path / "git-cache"
    settings.FIREWORK_RUN_RETRY_BASE_SECONDS = 0.05
    settings.FIREWORK_RUN_BUSY_RETRY_SECONDS = 0.05
    return tmp_path / "store"


@pytest.fixture
def repository(git: GitHTTPServer, store_dir: Path) -> ConfigRepository:
    return ConfigRepository.objects.create(
        name="ops", clone_url=f"{git.url}/ops.git", access_token_env=TOKEN_ENV
    )


def _queue(repository: ConfigRepository, sha: str = "") -> Revision:
    """A queued revision, created without superseding the queued ones."""
    return Revision.objects.create(
        repository=repository,
        ref=repository.branch,
        commit_sha=sha,
        trigger=Revision.Trigger.MANUAL,
    )


def _run(revision: Revision) -> Revision:
    run_revision.delay(revision.pk)
    revision.refresh_from_db()
    return revision


def _published(store_dir: Path) -> dict[str, str]:
    return {
        key: LocalStore(store_dir).get(key).data.decode() for key in _keys(store_dir)
    }


def _keys(store_dir: Path) -> list[str]:
    return LocalStore(store_dir).list("nodes/")


def _head(origin: Path) -> str:
    return (origin / ".git" / "refs" / "heads" / "main").read_text().strip()


def test_a_requested_run_publishes_and_records_its_outputs(
    repository: ConfigRepository,
    origin: Path,
    store_dir: Path,
    django_capture_on_commit_callbacks: Any,
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        revision = request_run(repository, trigger=Revision.Trigger.MANUAL)
    revision.refresh_from_db()
    assert revision.status == Status.SUCCEEDED
    assert revision.commit_sha == _head(origin)
    assert revision.published and revision.attempts == 1
    assert revision.errors == [] and revision.failure == ""
    assert revision.started_at and revision.finished_at
    assert revision.finished_at >= revision.started_at
    (output,) = NodeConfigOutput.objects.filter(revision=revision)
    stored = LocalStore(store_dir).get(KEY)
    assert output.node_type == "general-purpose"
    assert output.object_key == KEY
    assert output.content == stored.data.decode()
    assert output.etag == stored.etag
    assert len(output.sha256) == 64
    assert output.services == ["web"]
    assert "name: web" in output.content


def test_an_invalid_commit_fails_with_its_errors_and_keeps_what_was_published(
    repository: ConfigRepository, origin: Path, store_dir: Path
) -> None:
    assert _run(_queue(repository)).status == Status.SUCCEEDED
    before = _published(store_dir)
    broken = base_service("web")
    del broken["image"]
    commit_tree(
        origin,
        {
            "services/web.yaml": yaml.safe_dump(broken),
            "services/api.yaml": _spec("api"),
        },
        "break web",
    )
    revision = _run(_queue(repository))
    assert revision.status == Status.FAILED
    assert revision.commit_sha == _head(origin)
    assert not revision.published
    assert revision.failure == ""
    assert revision.errors
    assert all(e["file"] == "services/web.yaml" for e in revision.errors)
    assert all(e["service"] == "web" for e in revision.errors)
    assert any("image" in e["message"] for e in revision.errors)
    assert not revision.outputs.exists()
    assert _published(store_dir) == before


def test_warnings_are_recorded_with_a_successful_run(
    repository: ConfigRepository, origin: Path
) -> None:
    commit_tree(origin, {"services/web.yaml": _spec("web", imagee="typo")}, "typo")
    revision = _run(_queue(repository))
    assert revision.status == Status.SUCCEEDED
    assert [(w["file"], w["service"]) for w in revision.warnings] == [
        ("services/web.yaml", "web")
    ]
    assert "imagee" in revision.warnings[0]["message"]


def test_a_superseded_revision_is_not_run(
    repository: ConfigRepository, store_dir: Path
) -> None:
    older = request_run(repository, trigger=Revision.Trigger.MANUAL)
    request_run(repository, trigger=Revision.Trigger.MANUAL)
    older = _run(older)
    assert older.status == Status.SUPERSEDED
    assert older.attempts == 0 and older.started_at is None
    assert _keys(store_dir) == []


def test_a_finished_revision_is_not_run_again(
    repository: ConfigRepository, origin: Path
) -> None:
    revision = _run(_queue(repository))
    finished_at = revision.finished_at
    commit_tree(origin, {"services/api.yaml": _spec("api")}, "api")
    revision = _run(revision)
    assert revision.status == Status.SUCCEEDED
    assert revision.attempts == 1 and revision.finished_at == finished_at
    assert revision.outputs.get().services == ["web"]


def test_an_older_revision_never_publishes_after_a_newer_one_succeeded(
    repository: ConfigRepository, origin: Path, store_dir: Path
) -> None:
    old_sha = _head(origin)
    commit_tree(origin, {"services/api.yaml": _spec("api")}, "api")
    older, newer = _queue(repository, sha=old_sha), _queue(repository)
    assert _run(newer).status == Status.SUCCEEDED
    published = _published(store_dir)
    older = _run(older)
    assert older.status == Status.SUPERSEDED
    assert not older.published and not older.outputs.exists()
    assert _published(store_dir) == published
    assert "name: api" in published[KEY]


def test_a_run_waits_while_another_revision_of_its_repository_runs(
    repository: ConfigRepository,
) -> None:
    running = _queue(repository)
    Revision.objects.filter(pk=running.pk).update(
        status=Status.RUNNING, started_at=timezone.now()
    )
    waiting = _queue(repository)
    outcome = execute.run_revision(waiting.pk)
    assert outcome.busy and outcome.retry_in is not None
    waiting.refresh_from_db()
    assert waiting.status == Status.QUEUED and waiting.attempts == 0


def test_the_next_queued_revision_starts_when_the_running_one_ends(
    repository: ConfigRepository, origin: Path, store_dir: Path
) -> None:
    first = _queue(repository, sha=_head(origin))
    commit_tree(origin, {"services/api.yaml": _spec("api")}, "api")
    second = _queue(repository)
    _run(first)  # only the first is started; it hands over to the second
    second.refresh_from_db()
    assert first.status == Status.SUCCEEDED
    assert second.status == Status.SUCCEEDED
    assert second.commit_sha == _head(origin)
    assert "name: api" in _published(store_dir)[KEY]


def test_an_abandoned_run_is_failed_and_no_longer_blocks_its_repository(
    repository: ConfigRepository,
) -> None:
    stuck = _queue(repository)
    Revision.objects.filter(pk=stuck.pk).update(
        status=Status.RUNNING,
        started_at=timezone.now() - execute.ABANDONED_AFTER - timedelta(seconds=1),
    )
    assert _run(_queue(repository)).status == Status.SUCCEEDED
    stuck.refresh_from_db()
    assert stuck.status == Status.FAILED
    assert stuck.failure.startswith("abandoned: ")


def test_a_git_outage_is_retried_until_the_server_is_back(
    repository: ConfigRepository, git: GitHTTPServer
) -> None:
    git.unavailable = True
    revision = _queue(repository)
    outcome = execute.run_revision(revision.pk)
    revision.refresh_from_db()
    assert outcome.retry_in is not None and not outcome.busy
    assert revision.status == Status.QUEUED and revision.attempts == 1
    assert revision.failure.startswith("attempt 1 failed, retrying: fetching ")
    assert "503" in revision.failure
    git.unavailable = False
    assert execute.run_revision(revision.pk).status == Status.SUCCEEDED
    revision.refresh_from_db()
    assert revision.attempts == 2 and revision.failure == ""


def test_the_task_retries_in_process_with_backoff_when_there_is_no_broker(
    repository: ConfigRepository, git: GitHTTPServer, settings: Any
) -> None:
    settings.FIREWORK_RUN_MAX_ATTEMPTS = 8  # up to ~6 s of backoff: load-proof
    git.unavailable = True
    back = threading.Timer(0.15, lambda: setattr(git, "unavailable", False))
    back.start()
    try:
        revision = _run(_queue(repository))
    finally:
        back.cancel()
    assert revision.status == Status.SUCCEEDED
    assert revision.attempts >= 2


def test_transient_failures_stop_after_the_last_attempt(
    repository: ConfigRepository, settings: Any
) -> None:
    settings.FIREWORK_RUN_MAX_ATTEMPTS = 3
    repository.clone_url = "http://127.0.0.1:9/ops.git"  # port 9: refused
    repository.save()
    revision = _run(_queue(repository))
    assert revision.status == Status.FAILED
    assert revision.attempts == 3
    assert revision.failure.startswith("fetching http://127.0.0.1:9/ops.git: ")


def test_a_bad_token_fails_at_once_and_no_token_is_logged(
    repository: ConfigRepository,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv(TOKEN_ENV, "wrong-token-000")
    with caplog.at_level(logging.DEBUG):
        revision = _run(_queue(repository))
    assert revision.status == Status.FAILED
    assert revision.attempts == 1
    assert revision.failure == (
        f"fetching {repository.clone_url}: access denied (check the token)"
    )
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert "wrong-token-000" not in logged and TOKEN not in logged


def test_an_unreadable_token_file_fails_naming_the_variable(
    repository: ConfigRepository, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(TOKEN_ENV)
    monkeypatch.setenv(f"{TOKEN_ENV}_FILE", str(tmp_path / "missing"))
    revision = _run(_queue(repository))
    assert revision.status == Status.FAILED
    assert revision.failure.startswith(f"reading the access token: {TOKEN_ENV}_FILE")


def test_a_missing_branch_fails_at_once(repository: ConfigRepository) -> None:
    revision = Revision.objects.create(
        repository=repository, ref="release", trigger=Revision.Trigger.API
    )
    revision = _run(revision)
    assert revision.status == Status.FAILED and revision.attempts == 1
    assert revision.failure.endswith(": no branch release")


def test_the_config_subdirectory_is_used(
    repository: ConfigRepository, origin: Path, store_dir: Path
) -> None:
    commit_tree(origin, {"deploy/services/api.yaml": _spec("api")}, "deploy")
    repository.config_subdir = "deploy"
    repository.save()
    revision = _run(_queue(repository))
    assert revision.status == Status.SUCCEEDED
    assert revision.outputs.get().services == ["api"]


def test_an_empty_result_fails_unless_the_repository_allows_it(
    repository: ConfigRepository, origin: Path, store_dir: Path
) -> None:
    assert _run(_queue(repository)).status == Status.SUCCEEDED
    commit_tree(origin, {"services/web.yaml": None, "README.md": "empty"}, "empty")
    refused = _run(_queue(repository))
    assert refused.status == Status.FAILED and refused.attempts == 1
    assert refused.failure.startswith("refusing to publish an empty result")
    assert _keys(store_dir) == [KEY]
    repository.allow_empty = True
    repository.save()
    allowed = _run(_queue(repository))
    assert allowed.status == Status.SUCCEEDED
    assert allowed.deleted_keys == [KEY]
    assert _keys(store_dir) == []


def test_a_missing_revision_is_ignored() -> None:
    assert run_revision.delay(999_999).get() == ""


def test_a_run_publishes_to_s3(
    repository: ConfigRepository,
    s3_bucket: S3Bucket,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = s3_bucket.server
    for name, value in {
        "FIREWORK_STORE": "s3",
        "S3_BUCKET": s3_bucket.name,
        "S3_PREFIX": "fw",
        "S3_ENDPOINT_URL": server.endpoint_url,
        "S3_REGION": server.region,
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
    }.items():
        monkeypatch.setenv(name, value)
    revision = _run(_queue(repository))
    assert revision.status == Status.SUCCEEDED
    assert s3_bucket.raw_keys() == [f"fw/{KEY}"]
    stored = server.admin.get_object(Bucket=s3_bucket.name, Key=f"fw/{KEY}")
    output = revision.outputs.get()
    assert output.etag == stored["ETag"]
    assert output.content == stored["Body"].read().decode()

    # a wrong secret is refused by the server: no point in trying again
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    denied = _run(_queue(repository))
    assert denied.status == Status.FAILED and denied.attempts == 1
    assert "access denied" in denied.failure
    assert "wrong-secret" not in denied.failure


def test_an_unreachable_store_is_retried(
    repository: ConfigRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIREWORK_STORE", "s3")
    monkeypatch.setenv("S3_BUCKET", "nowhere")
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("S3_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    revision = _queue(repository)
    outcome = execute.run_revision(revision.pk)
    revision.refresh_from_db()
    assert outcome.retry_in is not None
    assert revision.status == Status.QUEUED
    assert "127.0.0.1:9" in revision.failure
