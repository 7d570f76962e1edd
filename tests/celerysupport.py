"""Celery in tests: tasks go to the in-memory broker, where tests read them.

The real Celery app and a real (in-memory) transport: ``delay()`` sends a message,
nothing runs it, and a test can see exactly what was queued.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from firework_site.celery import app as celery_app


@dataclass(frozen=True)
class QueuedTask:
    """A task message waiting in the broker."""

    name: str
    args: list[Any]


class TaskQueue:
    """Reads what was sent to Celery's in-memory broker, without running it."""

    queue_name = "celery"

    def drain(self) -> list[QueuedTask]:
        """Take every waiting message off the queue."""
        found = []
        with celery_app.connection_for_read() as connection:
            queue = connection.SimpleQueue(self.queue_name)
            try:
                while True:
                    try:
                        message = queue.get(block=False)
                    except queue.Empty:
                        break
                    args, _kwargs, _embed = message.payload
                    found.append(QueuedTask(message.headers["task"], list(args)))
                    message.ack()
            finally:
                queue.close()
        return found


@contextmanager
def celery_enqueues_only() -> Iterator[TaskQueue]:
    """Make ``delay()`` put tasks on the in-memory broker instead of running them."""
    conf = celery_app.conf
    saved = conf.task_always_eager, conf.broker_url
    conf.task_always_eager = False
    conf.broker_url = "memory://"
    queue = TaskQueue()
    queue.drain()
    try:
        yield queue
    finally:
        queue.drain()
        conf.task_always_eager, conf.broker_url = saved
