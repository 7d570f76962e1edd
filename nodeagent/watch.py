"""Notice the moment a Firecracker process exits, instead of at the next tick.

Each watched pid is held as a pidfd (Linux 5.3 and later), which becomes readable
when the process exits, whether or not it is our child: VMMs adopted after an
agent restart are watched the same way. One thread sleeps in poll(2) on all of
them plus a pipe that wakes it when the set changes. Nothing is ever signalled.

The caller must make sure a pid still belongs to its VMM before watching it (a
pid can be reused); once held as a pidfd, the process cannot be confused with a
later one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Watched:
    pid: int
    fd: int | None  # None: the process was gone before it could be watched


class ExitWatcher:
    """Calls ``on_exit(service, pid)`` once when a watched process exits.

    The callback runs on the watcher's thread: it should return quickly, and
    may call :meth:`watch` and :meth:`unwatch`. An instance is started once.
    """

    def __init__(self, on_exit: Callable[[str, int], None]) -> None:
        self._on_exit = on_exit
        self._lock = threading.Lock()
        self._watched: dict[str, _Watched] = {}
        # Only the watcher thread closes pidfds, never while polling them: a
        # closed number could be reused by a new pidfd and report the old exit.
        self._retired: list[int] = []
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopping = False
        self._thread: threading.Thread | None = None

    def watch(self, service: str, pid: int) -> None:
        """Watch ``pid`` as the VMM of ``service``, replacing an earlier pid."""
        try:
            fd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:
            fd = None  # already gone: reported by the thread soon
        with self._lock:
            self._retire(service)
            self._watched[service] = _Watched(pid, fd)
        self._wake()

    def unwatch(self, service: str) -> None:
        """Stop watching ``service``; its exit is no longer reported."""
        with self._lock:
            self._retire(service)
        self._wake()

    def start(self) -> None:
        """Start the watcher thread."""
        if self._thread is not None:
            raise RuntimeError("exit watcher already started")
        self._thread = threading.Thread(
            target=self._run, name="exit-watcher", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, wait for it and close every pidfd."""
        with self._lock:
            self._stopping = True
        self._wake()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            for service in list(self._watched):
                self._retire(service)
            self._close_retired()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _retire(self, service: str) -> None:
        old = self._watched.pop(service, None)
        if old is not None and old.fd is not None:
            self._retired.append(old.fd)

    def _close_retired(self) -> None:
        for fd in self._retired:
            os.close(fd)
        self._retired.clear()

    def _wake(self) -> None:
        # a full pipe already means "wake up"; a closed one, that we stopped
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._stopping:
                    return
                self._close_retired()
                gone = self._take([s for s, w in self._watched.items() if w.fd is None])
                polled = [w.fd for w in self._watched.values() if w.fd is not None]
            self._report(gone)
            if gone:
                continue  # the callbacks may have changed the set
            poller = select.poll()
            poller.register(self._wake_r, select.POLLIN)
            for fd in polled:
                poller.register(fd, select.POLLIN)
            ready = {fd for fd, _ in poller.poll()}
            if self._wake_r in ready:
                self._drain()
            with self._lock:
                # a pidfd retired meanwhile is still open, so no new one
                # can have its number: ``ready`` means these processes
                exited = self._take(
                    [s for s, w in self._watched.items() if w.fd in ready]
                )
            self._report(exited)

    def _take(self, services: list[str]) -> list[tuple[str, int]]:
        """Stop watching ``services``; returns them with their pids."""
        taken = [(service, self._watched[service].pid) for service in services]
        for service in services:
            self._retire(service)
        return taken

    def _report(self, exited: list[tuple[str, int]]) -> None:
        for service, pid in exited:
            log.info("vmm exited service=%s pid=%d", service, pid)
            try:
                self._on_exit(service, pid)
            except Exception:
                log.exception("exit callback failed service=%s pid=%d", service, pid)

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass
