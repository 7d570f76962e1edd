"""gunicorn settings for the control plane.

Used as ``gunicorn -c python:firework_site.gunicorn_conf firework_site.wsgi``.

Only what a deployment should not have to work out for itself:

- ``workers``: ``WEB_CONCURRENCY``, else one per CPU (at least two). The web's
  work is CPU-bound Python next to its database; on 2 cores
  ``bench/status_ingest.py`` ingests most with 2 workers, and a third only adds
  latency.
- The app is loaded once in the master and its objects frozen out of the
  garbage collector before the workers fork, so no worker's collections walk
  (and so copy) the import-time heap: its pages stay shared between workers
  (measured after 800 API requests: 64 MB private memory per worker, not 75).
- With ``PROMETHEUS_MULTIPROC_DIR`` set, a worker that exits has its live
  gauges removed from the shared directory.
- Workers are not recycled (``max_requests`` 0): on that bench, recycling
  every 1,000 requests, a common setting, took p99 at 500 reports/s from 8 ms
  to 375 ms. A request may take 60 s.

Anything here can still be overridden on the command line (``--workers 4``);
the access log is left to it (``--access-logfile -``).
"""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any


def default_workers(environ: dict[str, str] | None = None) -> int:
    """``WEB_CONCURRENCY`` if set, else one worker per CPU, at least two."""
    environ = dict(os.environ) if environ is None else environ
    given = environ.get("WEB_CONCURRENCY", "").strip()
    if given:
        return max(1, int(given))
    return max(2, len(os.sched_getaffinity(0)))


workers = default_workers()
preload_app = True
timeout = 60
max_requests = 0
# The worker heartbeat file: on a disk-backed /tmp (containers) a slow disk
# can stall it long enough for the master to kill a healthy worker.
# Only gunicorn's own unlinked heartbeat files go there (S108 is about guessable
# names in shared directories).
_SHM = "/dev/shm"  # noqa: S108
if Path(_SHM).is_dir() and os.access(_SHM, os.W_OK):
    worker_tmp_dir = _SHM


def when_ready(server: Any) -> None:
    """In the master, after loading the app and before the first fork."""
    gc.collect()
    gc.freeze()
    server.log.info("app objects frozen out of gc count=%s", gc.get_freeze_count())


def child_exit(server: Any, worker: Any) -> None:
    """Drop the exited worker's live gauges from the shared metrics directory."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
