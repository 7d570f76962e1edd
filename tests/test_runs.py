"""Requesting runs: older queued runs are superseded; a broker failure is recorded."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from controlplane.models import ConfigRepository, Revision
from controlplane.runs import request_run
from firework_site.celery import app as celery_app
from tests.celerysupport import celery_enqueues_only

pytestmark = pytest.mark.django_db


@pytest.fixture
def repository() -> ConfigRepository:
    return ConfigRepository.objects.create(name="ops", clone_url="file:///nowhere")


@pytest.fixture
def broker_down() -> Iterator[None]:
    """Celery pointed at a loopback port where no broker listens."""
    conf, amqp = celery_app.conf, celery_app.amqp
    saved = conf.task_always_eager, conf.broker_url, conf.task_publish_retry
    pools = celery_app._pool, amqp._producer_pool  # pooled per broker URL
    conf.task_always_eager = False
    conf.broker_url = "redis://127.0.0.1:9/0"  # discard port: connection refused
    conf.task_publish_retry = False
    celery_app._pool = amqp._producer_pool = None
    try:
        yield
    finally:
        conf.task_always_eager, conf.broker_url, conf.task_publish_retry = saved
        celery_app._pool, amqp._producer_pool = pools


def test_a_run_is_queued_after_the_commit(
    repository: ConfigRepository, django_capture_on_commit_callbacks
) -> None:
    with celery_enqueues_only() as queue:
        with django_capture_on_commit_callbacks(execute=True):
            revision = request_run(repository, trigger=Revision.Trigger.API)
            assert queue.drain() == []  # nothing before the commit
        assert [(t.name, t.args) for t in queue.drain()] == [
            ("controlplane.tasks.run_revision", [revision.pk])
        ]
    revision.refresh_from_db()
    assert revision.status == Revision.Status.QUEUED
    assert revision.ref == "main"


def test_a_newer_request_supersedes_queued_ones(
    repository: ConfigRepository, django_capture_on_commit_callbacks
) -> None:
    with celery_enqueues_only(), django_capture_on_commit_callbacks(execute=True):
        first = request_run(repository, trigger=Revision.Trigger.WEBHOOK)
        second = request_run(repository, trigger=Revision.Trigger.WEBHOOK)
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.status == Revision.Status.SUPERSEDED
    assert second.status == Revision.Status.QUEUED


def test_a_broker_that_is_down_fails_the_revision_not_the_request(
    repository: ConfigRepository, broker_down: None, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        revision = request_run(repository, trigger=Revision.Trigger.API)
    revision.refresh_from_db()
    assert revision.status == Revision.Status.FAILED
    assert revision.failure.startswith("the run could not be queued: ")
    assert revision.finished_at is not None
