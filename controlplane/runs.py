"""Requesting enrichment runs: the one way a revision is created and scheduled.

The webhook, the REST API, the dashboard and ``make run`` all call
:func:`request_run`; the Celery task in :mod:`controlplane.tasks` does the work.
"""

from __future__ import annotations

import logging

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from controlplane import metrics
from controlplane.models import ConfigRepository, Revision

log = logging.getLogger(__name__)


def request_run(
    repository: ConfigRepository,
    *,
    trigger: Revision.Trigger,
    ref: str = "",
    commit_sha: str = "",
    delivery_id: str = "",
    requested_by: User | None = None,
) -> Revision:
    """Record a queued revision and schedule its run once the transaction commits.

    ``ref`` defaults to the repository's branch; an empty ``commit_sha`` means the
    head of ``ref`` when the run starts. Older queued runs of the repository are
    superseded: only the newest request needs to run.
    """
    with transaction.atomic():
        superseded = Revision.objects.filter(
            repository=repository, status=Revision.Status.QUEUED
        ).update(status=Revision.Status.SUPERSEDED, finished_at=timezone.now())
        revision = Revision.objects.create(
            repository=repository,
            ref=ref or repository.branch,
            commit_sha=commit_sha,
            trigger=trigger,
            delivery_id=delivery_id,
            requested_by=requested_by,
        )
        # logged before the commit: without a broker, the run happens at commit
        log.info(
            "run requested repository=%s revision=%s trigger=%s ref=%s sha=%s "
            "superseded=%d",
            repository.name,
            revision.pk,
            trigger,
            revision.ref,
            commit_sha or "-",
            superseded,
        )
        transaction.on_commit(lambda: _schedule(revision.pk))
    return revision


def _schedule(revision_id: int) -> None:
    """Hand the run to Celery; if that fails, the revision fails with the reason.

    Called after the commit, from the request that asked for the run: a broker that
    is down (or, without a broker, an error in the in-process run) must not turn
    that request into a 500 or leave the revision queued forever.
    """
    from controlplane.tasks import run_revision  # the task module imports us

    try:
        run_revision.delay(revision_id)
    except Exception as exc:  # any failure to queue is reported on the revision
        # the type only: a broker's message may quote its URL with credentials
        log.error(
            "run not queued revision=%s error=%s", revision_id, type(exc).__name__
        )
        Revision.objects.filter(
            pk=revision_id, status__in=[Revision.Status.QUEUED, Revision.Status.RUNNING]
        ).update(
            status=Revision.Status.FAILED,
            failure=f"the run could not be queued: {type(exc).__name__}",
            finished_at=timezone.now(),
        )
        metrics.run_finished(Revision.Status.FAILED, None)  # it never started
