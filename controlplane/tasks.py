"""Celery tasks of the control plane.

The work itself is in :mod:`controlplane.execute`; the task adds what only a
queue can do: run it later. With a broker, a run waiting for its repository or
for a retry goes back to the queue with a countdown instead of holding a worker.
Without one (``CELERY_TASK_ALWAYS_EAGER``, the embedded default) the same code runs
in the calling process, sleeping between retries.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import shared_task

from controlplane import execute

log = logging.getLogger(__name__)

# A run is a fetch, an enrichment and a few uploads: minutes at the very most.
# The hard limit stays below execute.ABANDONED_AFTER (prefork pools enforce it).
SOFT_TIME_LIMIT_SECONDS = 15 * 60
TIME_LIMIT_SECONDS = 20 * 60


@shared_task(  # type: ignore[untyped-decorator]  # celery ships no type hints
    bind=True,
    name="controlplane.tasks.run_revision",
    acks_late=True,
    max_retries=None,  # execute bounds the attempts; waiting for a lock is free
    soft_time_limit=SOFT_TIME_LIMIT_SECONDS,
    time_limit=TIME_LIMIT_SECONDS,
)
def run_revision(self: Any, revision_id: int) -> str:
    """Run the revision ``revision_id`` and return its status afterwards."""
    in_process = bool(self.request.is_eager or self.request.called_directly)
    while True:
        outcome = execute.run_revision(revision_id)
        if outcome.next_revision is not None:
            run_revision.delay(outcome.next_revision)
        if outcome.retry_in is None:
            return outcome.status
        if not in_process:
            raise self.retry(countdown=outcome.retry_in)
        if outcome.busy:
            # The run holding the repository starts the next queued one when it
            # ends (next_revision above), so nothing waits here.
            return outcome.status
        log.info(
            "retrying in process revision=%s seconds=%.1f",
            revision_id,
            outcome.retry_in,
        )
        time.sleep(outcome.retry_in)
