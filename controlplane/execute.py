"""Running one revision: claim it, check out its commit, enrich, publish, record.

This is the work of the Celery task :func:`controlplane.tasks.run_revision`, kept
free of Celery so that it runs (and is tested) the same with or without a broker.
:func:`run_revision` makes one attempt and says in its :class:`Outcome` whether
and when to try again; the task does the waiting.

The rules, in order:

1. One run per repository at a time. A queued revision is claimed with a single
   conditional UPDATE (queued -> running, only while no other revision of the
   repository runs), under a row lock on the repository where the database has
   them (PostgreSQL). SQLite runs one writer at a time, which gives the same.
2. Newer wins. Revisions are ordered by id, that is by request. A revision is
   never published once a newer one of its repository has succeeded: it is
   marked superseded instead, so configs of an older request never replace
   those of a newer one.
3. A failed run publishes nothing; what was published before stays in place.
   Node config outputs are recorded only for published runs.
4. Network and store failures are retried with exponential backoff, up to
   ``FIREWORK_RUN_MAX_ATTEMPTS`` attempts (counted in ``Revision.attempts``);
   anything else fails at once. A newer request supersedes a run waiting to
   retry.
5. A run still marked running after ``ABANDONED_AFTER`` lost its worker: it is
   marked failed, so it does not block its repository for ever.
"""

from __future__ import annotations

import functools
import logging
import os
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError, OperationalError, connection, transaction
from django.db.models import Exists, F, QuerySet
from django.utils import timezone

from controlplane import metrics, ownership
from controlplane.enrichment import PipelineResult, run_pipeline
from controlplane.envvars import EnvError
from controlplane.gitcache import GitCache, GitCacheError
from controlplane.models import ConfigRepository, NodeConfigOutput, Revision
from controlplane.objectstore import (
    AccessDenied,
    InvalidKey,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreError,
    StoreConfigError,
    store_from_env,
)
from controlplane.publish import PublishFailed, PublishRefused, PublishReport, publish
from controlplane.runs import request_run
from nodeagent.spec import Problem

log = logging.getLogger(__name__)

Status = Revision.Status

# Defaults of the settings read by _setting(); settings.py may override them.
MAX_ATTEMPTS = 5
RETRY_BASE_SECONDS = 2.0
RETRY_MAX_SECONDS = 120.0
BUSY_RETRY_SECONDS = 2.0
# Longer than the task's hard time limit (controlplane.tasks), so only a run
# whose worker died is ever taken for abandoned.
ABANDONED_AFTER = timedelta(minutes=30)
_PERMANENT_STORE_ERRORS = (AccessDenied, InvalidKey, ObjectNotFound, StoreConfigError)
# What store_from_env reads (with their *_FILE variants).
_STORE_VARIABLES = ("FIREWORK_STORE", "S3_", "AWS_")


class RunError(Exception):
    """A run failed for an operational reason; ``transient`` ones are retried."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class Outcome:
    """What one call of :func:`run_revision` did, and what the caller should do.

    ``status`` is the revision's status afterwards ("" when it does not exist).
    ``retry_in``: call again after that many seconds. ``busy``: another revision
    of the repository is running (it starts ``next_revision`` when it ends).
    ``next_revision``: a queued revision of the same repository to start now.
    """

    revision_id: int
    status: str
    retry_in: float | None = None
    busy: bool = False
    next_revision: int | None = None


def run_revision(
    revision_id: int,
    *,
    store: ObjectStore | None = None,
    cache: GitCache | None = None,
) -> Outcome:
    """Make one attempt at running a queued revision, and record what happened.

    ``store`` defaults to ``store_from_env(os.environ)`` and ``cache`` to the
    cache in ``settings.FIREWORK_GIT_CACHE_DIR``. Failures of the run end up on
    the revision; this function raises only if the database itself fails.
    """
    claimed = _claim(revision_id)
    if isinstance(claimed, Outcome):
        return claimed
    revision = claimed
    log.info(
        "run started revision=%s repository=%s attempt=%d ref=%s sha=%s",
        revision.pk,
        revision.repository.name,
        revision.attempts,
        revision.ref,
        revision.commit_sha or "-",
    )
    try:
        return _run(revision, store, cache)
    except (RunError, GitCacheError) as exc:
        return _failed(revision, _scrub(str(exc), revision), transient=exc.transient)
    except Exception as exc:
        # A bug must not leave the revision running nor kill the worker; the
        # message may quote anything, so only the exception's type is kept.
        log.exception("run crashed revision=%s", revision.pk)
        return _failed(revision, f"internal error: {type(exc).__name__}", False)


def _claim(revision_id: int) -> Revision | Outcome:
    current = Revision.objects.filter(pk=revision_id).values("status", "repository")
    row = current.first()
    if row is None:
        log.warning("run skipped, no such revision revision=%s", revision_id)
        return Outcome(revision_id, "")
    if row["status"] not in (Status.QUEUED, Status.RUNNING):
        log.info("run skipped revision=%s status=%s", revision_id, row["status"])
        return Outcome(revision_id, row["status"])
    repository_id: int = row["repository"]
    try:
        with transaction.atomic():
            _lock_repository(repository_id)
            # read the clock only once the lock is held: a claim that waited for
            # the previous run must not start before that run finished
            now = timezone.now()
            _fail_abandoned(repository_id, now)
            claimed = _claimable(revision_id, repository_id).update(
                status=Status.RUNNING,
                started_at=now,
                finished_at=None,
                attempts=F("attempts") + 1,
                failure="",
            )
    except OperationalError as exc:
        # SQLite: another process holds the write lock longer than the timeout.
        log.warning("run claim deferred revision=%s error=%s", revision_id, exc)
        return Outcome(revision_id, Status.QUEUED, retry_in=_busy_delay(), busy=True)
    if claimed:
        return Revision.objects.select_related("repository").get(pk=revision_id)
    return _not_claimed(revision_id, repository_id)


def _lock_repository(repository_id: int) -> None:
    # Serialises claims of one repository on PostgreSQL, where two concurrent
    # UPDATEs would not see each other's new "running" row.
    if connection.features.has_select_for_update:
        rows = ConfigRepository.objects.select_for_update().filter(pk=repository_id)
        list(rows.values_list("pk", flat=True))


def _fail_abandoned(repository_id: int, now: datetime) -> None:
    abandoned = Revision.objects.filter(
        repository_id=repository_id,
        status=Status.RUNNING,
        started_at__lt=now - ABANDONED_AFTER,
    ).update(
        status=Status.FAILED,
        finished_at=now,
        failure="abandoned: the worker running it stopped before it finished",
    )
    if abandoned:
        log.warning(
            "abandoned runs failed repository=%s count=%d", repository_id, abandoned
        )


def _claimable(revision_id: int, repository_id: int) -> QuerySet[Revision]:
    others = Revision.objects.filter(repository_id=repository_id).exclude(
        pk=revision_id
    )
    return (
        Revision.objects.filter(pk=revision_id, status=Status.QUEUED)
        .exclude(Exists(others.filter(status=Status.RUNNING)))
        .exclude(Exists(others.filter(status=Status.SUCCEEDED, pk__gt=revision_id)))
    )


def _not_claimed(revision_id: int, repository_id: int) -> Outcome:
    status = Revision.objects.values_list("status", flat=True).get(pk=revision_id)
    if status != Status.QUEUED:
        log.info("run skipped revision=%s status=%s", revision_id, status)
        return Outcome(revision_id, status)
    if _newer_succeeded(revision_id, repository_id):
        superseded = Revision.objects.filter(
            pk=revision_id, status=Status.QUEUED
        ).update(status=Status.SUPERSEDED, finished_at=timezone.now())
        log.info("run superseded by a newer success revision=%s", revision_id)
        status = Status.SUPERSEDED if superseded else status
        return Outcome(revision_id, status, next_revision=_next(repository_id))
    log.info("run deferred, repository busy revision=%s", revision_id)
    return Outcome(revision_id, Status.QUEUED, retry_in=_busy_delay(), busy=True)


def _newer_succeeded(revision_id: int, repository_id: int) -> bool:
    return Revision.objects.filter(
        repository_id=repository_id, status=Status.SUCCEEDED, pk__gt=revision_id
    ).exists()


def _next(repository_id: int) -> int | None:
    queued = Revision.objects.filter(repository_id=repository_id, status=Status.QUEUED)
    return queued.order_by("-pk").values_list("pk", flat=True).first()


def _run(
    revision: Revision, store: ObjectStore | None, cache: GitCache | None
) -> Outcome:
    repository = revision.repository
    cache = cache or GitCache(Path(settings.FIREWORK_GIT_CACHE_DIR))
    with cache.checkout(
        repository.name,
        repository.clone_url,
        ref=revision.ref,
        sha=revision.commit_sha,
        token=_token(repository),
        subdir=repository.config_subdir,
    ) as checkout:
        if revision.commit_sha != checkout.sha:
            revision.commit_sha = checkout.sha
            Revision.objects.filter(pk=revision.pk).update(commit_sha=checkout.sha)
        result = run_pipeline(checkout.root)
    if result.errors:
        return _finish(revision, Status.FAILED, result=result)
    if _newer_succeeded(revision.pk, repository.pk):
        log.info("run not published, a newer one was revision=%s", revision.pk)
        return _finish(revision, Status.SUPERSEDED, result=result)
    taken = ownership.conflicts(repository, result.configs)
    if taken:
        raise RunError("; ".join(taken), transient=False)
    owned = ownership.published_node_types(repository.pk)
    report = _publish(store, result, repository.allow_empty, owned)
    outcome = _finish(revision, Status.SUCCEEDED, result=result, report=report)
    _hand_over(repository, owned - set(result.configs))
    return outcome


def _hand_over(repository: ConfigRepository, released: set[str]) -> None:
    """Run again what was refused a node type this repository no longer publishes."""
    for refused in ownership.waiting_for(repository, released):
        log.info(
            "node types handed over from=%s to=%s revision=%s released=%s",
            repository.name,
            refused.repository.name,
            refused.pk,
            ",".join(sorted(released)),
        )
        request_run(
            refused.repository,
            trigger=Revision.Trigger.HANDOVER,
            ref=refused.ref,
            commit_sha=refused.commit_sha,
        )


def _token(repository: ConfigRepository) -> str:
    try:
        return repository.access_token()
    except EnvError as exc:  # names the variable and file, never the secret
        raise RunError(f"reading the access token: {exc}", transient=False) from None


def _publish(
    store: ObjectStore | None,
    result: PipelineResult,
    allow_empty: bool,
    owned: set[str],
) -> PublishReport:
    try:
        target = store or _store_from_env()
        return publish(target, result, allow_empty=allow_empty, owned=owned)
    except PublishRefused as exc:
        raise RunError(str(exc), transient=False) from None
    except PublishFailed as exc:
        cause = exc.__cause__
        permanent = isinstance(cause, _PERMANENT_STORE_ERRORS)
        raise RunError(str(exc), transient=not permanent) from None
    except ObjectStoreError as exc:
        permanent = isinstance(exc, _PERMANENT_STORE_ERRORS)
        raise RunError(str(exc), transient=not permanent) from None


def _store_from_env() -> ObjectStore:
    """The store the environment names, built once per distinct setting.

    Building an S3 client takes about 0.1 s, a good part of a small run. A
    changed variable, or a changed ``*_FILE`` (rotated keys), builds a new one.
    """
    names = sorted(n for n in os.environ if n.startswith(_STORE_VARIABLES))
    key = tuple(
        (n, os.environ[n], _mtime(os.environ[n]) if n.endswith("_FILE") else 0)
        for n in names
    )
    return _cached_store(key)


@functools.lru_cache(maxsize=1)
def _cached_store(key: tuple[tuple[str, str, int], ...]) -> ObjectStore:
    return store_from_env({name: value for name, value, _ in key})


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1  # store_from_env reports the unreadable file


def _problems(problems: list[Problem]) -> list[dict[str, str]]:
    return [
        {"file": p.file, "service": p.service, "message": p.message} for p in problems
    ]


def _finish(
    revision: Revision,
    status: Status,
    *,
    result: PipelineResult | None = None,
    report: PublishReport | None = None,
    failure: str = "",
) -> Outcome:
    """Record the end of a running revision; with ``report``, what it published."""
    fields = {
        "status": status,
        "failure": failure,
        "published": report is not None,
        "deleted_keys": list(report.deleted) if report else [],
    }
    if result is not None:
        fields["errors"] = _problems(result.errors)
        fields["warnings"] = _problems(result.warnings)
    with transaction.atomic():
        # the same lock as claims: the next run of the repository can only be
        # claimed after this end is recorded, and its start time comes later
        _lock_repository(revision.repository_id)
        now = fields["finished_at"] = timezone.now()
        updated = Revision.objects.filter(pk=revision.pk, status=Status.RUNNING).update(
            **fields
        )
        if updated and report is not None and result is not None:
            NodeConfigOutput.objects.bulk_create(_outputs(revision, result, report))
    if not updated:
        log.warning("run result not recorded, status changed revision=%s", revision.pk)
    started = revision.started_at
    seconds = (now - started).total_seconds() if started else 0.0
    metrics.run_finished(status, seconds)
    log.info(
        "run finished revision=%s status=%s attempt=%d seconds=%.3f errors=%d "
        "published=%s",
        revision.pk,
        status,
        revision.attempts,
        seconds,
        len(result.errors) if result else 0,
        report is not None,
    )
    return Outcome(revision.pk, status, next_revision=_next(revision.repository_id))


def _outputs(
    revision: Revision, result: PipelineResult, report: PublishReport
) -> list[NodeConfigOutput]:
    return [
        NodeConfigOutput(
            revision=revision,
            node_type=node_type,
            content=result.configs[node_type],
            sha256=config.sha256,
            object_key=config.key,
            etag=config.etag,
            services=result.services.get(node_type, []),
        )
        for node_type, config in sorted(report.configs.items())
    ]


def _failed(revision: Revision, message: str, transient: bool) -> Outcome:
    """Fail ``revision``, or put it back in the queue when trying again may help."""
    if not transient or revision.attempts >= _setting("MAX_ATTEMPTS", MAX_ATTEMPTS):
        log.warning("run failed revision=%s error=%s", revision.pk, message)
        return _finish_quietly(revision, Status.FAILED, message)
    if _next(revision.repository_id) is not None:
        # A newer request is waiting: it will fetch at least as new a commit.
        return _finish_quietly(revision, Status.SUPERSEDED, "")
    delay = _backoff(revision.attempts)
    Revision.objects.filter(pk=revision.pk, status=Status.RUNNING).update(
        status=Status.QUEUED,
        failure=f"attempt {revision.attempts} failed, retrying: {message}",
    )
    log.warning(
        "run failed, retrying revision=%s attempt=%d retry_in=%.1f error=%s",
        revision.pk,
        revision.attempts,
        delay,
        message,
    )
    return Outcome(revision.pk, Status.QUEUED, retry_in=delay)


def _finish_quietly(revision: Revision, status: Status, failure: str) -> Outcome:
    try:
        return _finish(revision, status, failure=failure)
    except DatabaseError:
        # Nothing more can be recorded; the run counts as abandoned later.
        log.exception("run result lost revision=%s", revision.pk)
        return Outcome(revision.pk, Status.RUNNING)


def _backoff(attempt: int) -> float:
    base = _setting("RETRY_BASE_SECONDS", RETRY_BASE_SECONDS)
    ceiling = _setting("RETRY_MAX_SECONDS", RETRY_MAX_SECONDS)
    delay = min(ceiling, base * 2.0 ** max(0, attempt - 1))
    # Jitter spreads the retries of many repositories after a shared outage.
    return delay * random.uniform(0.8, 1.2)  # noqa: S311 - not for security


def _busy_delay() -> float:
    return _setting("BUSY_RETRY_SECONDS", BUSY_RETRY_SECONDS)


def _setting(name: str, default: float) -> float:
    return float(getattr(settings, f"FIREWORK_RUN_{name}", default))


def _scrub(message: str, revision: Revision) -> str:
    try:
        token = revision.repository.access_token()
    except EnvError:
        return message
    return message.replace(token, "***") if token else message
