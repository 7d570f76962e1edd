"""Health checks: probe each service on its guest IP and report what was seen.

:func:`probe` runs one check. :class:`HealthMonitor` runs them on schedule: one
scheduler thread hands due probes to a bounded pool, so a guest that lets its
probes time out delays only its own next probe, never another service's. Results
go to :class:`~nodeagent.status.AgentStatus`; decisions (restart, reset the
backoff) are the caller's, through the ``on_unhealthy`` and ``on_healthy``
callbacks.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final, Literal

from nodeagent.durations import parse_duration
from nodeagent.spec.node import ServiceConfig
from nodeagent.status import AgentStatus, HealthState

log = logging.getLogger(__name__)

STATUS_LINE_MAX: Final = 1024  # bytes read from a response: the status line only
USER_AGENT: Final = "firework-agent"
# While a guest boots (its grace period, before its first pass) it is probed at
# least this often, so a fast boot turns healthy at once, not an interval later.
BOOT_PROBE_INTERVAL: Final = 0.5


@dataclass(frozen=True)
class Target:
    """What to probe for one service, with durations in seconds."""

    service: str
    type: Literal["http", "tcp"]
    host: str
    port: int
    path: str | None
    interval: float
    timeout: float
    retries: int

    def same_endpoint(self, other: Target) -> bool:
        """Whether ``other`` probes the same thing, only on another schedule."""
        return (self.type, self.host, self.port) == (other.type, other.host, other.port)


def target_for(service: ServiceConfig, guest_ip: str) -> Target | None:
    """The probe target of ``service`` at ``guest_ip``; None without a check."""
    check = service.health_check
    if check is None:
        return None
    return Target(
        service=service.name,
        type=check.type,
        host=guest_ip,
        port=check.port,
        path=(check.path or "/") if check.type == "http" else None,
        interval=parse_duration(check.interval),
        timeout=parse_duration(check.timeout),
        retries=check.retries,
    )


class _ProbeFailed(Exception):
    """A probe saw something other than a healthy answer; the message says what."""


def probe(target: Target) -> str | None:
    """Probe ``target`` once: None when healthy, else a short reason.

    The whole probe, connect included, ends within ``target.timeout``. An http
    check sends one GET and reads only the status line: 2xx is healthy and a
    redirect is not followed. A tcp check connects and closes.
    """
    deadline = time.monotonic() + target.timeout
    try:
        with _connect(target, deadline) as sock:
            if target.type == "http":
                _check_http(sock, target, deadline)
    except TimeoutError:
        return f"timeout after {target.timeout}s"
    except _ProbeFailed as exc:
        return str(exc)
    return None


def _connect(target: Target, deadline: float) -> socket.socket:
    try:
        return socket.create_connection(
            (target.host, target.port), timeout=_left(deadline)
        )
    except TimeoutError:
        raise
    except OSError as exc:
        raise _ProbeFailed(f"connect: {exc.strerror or exc}") from None


def _check_http(sock: socket.socket, target: Target, deadline: float) -> None:
    request = (
        f"GET {target.path or '/'} HTTP/1.1\r\n"
        f"Host: {target.host}:{target.port}\r\n"
        f"User-Agent: {USER_AGENT}\r\n"
        "Connection: close\r\n\r\n"
    )
    try:
        sock.settimeout(_left(deadline))
        sock.sendall(request.encode("ascii"))
        line = _status_line(sock, deadline)
    except TimeoutError:
        raise
    except OSError as exc:
        raise _ProbeFailed(f"http: {exc.strerror or exc}") from None
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise _ProbeFailed("http: malformed status line")
    code = int(parts[1])
    if not 200 <= code < 300:
        raise _ProbeFailed(f"http {code}")


def _status_line(sock: socket.socket, deadline: float) -> bytes:
    """The first line of the response, reading no further than needed."""
    received = b""
    while b"\n" not in received:
        if len(received) >= STATUS_LINE_MAX:
            raise _ProbeFailed("http: status line too long")
        sock.settimeout(_left(deadline))
        chunk = sock.recv(STATUS_LINE_MAX - len(received))
        if not chunk:
            raise _ProbeFailed("http: connection closed before a response")
        received += chunk
    return received.split(b"\n", 1)[0].strip()


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


@dataclass
class _Watch:
    """The monitor's state for one service."""

    target: Target
    probes_from: float  # when the VM (re)started, or monitoring began
    grace_until: float  # failures before this do not count
    health: HealthState = "unknown"
    failures: int = 0
    reported: bool = False  # on_unhealthy was called for this failure streak
    last_probe: float | None = None
    epoch: int = 0  # bumped when results of probes in flight no longer count

    def booting(self, now: float) -> bool:
        """In the grace period and never passed since the start."""
        return now < self.grace_until and self.health != "healthy"

    def due_at(self) -> float:
        if self.last_probe is None:
            return self.probes_from
        step = self.target.interval
        if self.booting(self.last_probe):
            step = min(step, BOOT_PROBE_INTERVAL)
        return self.last_probe + step


class HealthMonitor:
    """Probes every monitored service on schedule and reports the results.

    A service is probed from when it started (see :meth:`started`) or was first
    given to :meth:`set_targets`, every ``interval``. For ``grace`` seconds after
    that its failures do not count (the guest is still booting) and, until its
    first pass, it is probed at least every :data:`BOOT_PROBE_INTERVAL`, so a
    guest that boots fast turns healthy at once. Its health is "unknown" until
    the first success; a failure changes it only when ``retries`` counted checks
    failed in a row: then it turns "unhealthy" and
    ``on_unhealthy(service, reason)`` is called, once for that streak. Every
    result is recorded with the current failure count and error.
    ``on_healthy(service)`` is called whenever a service turns healthy.
    Callbacks run on a pool thread; they may call any method but :meth:`stop`.

    ``clock`` must tick like :func:`time.monotonic`: the scheduler also sleeps in
    real time. With more slow services than ``max_workers``, probes queue.
    """

    def __init__(
        self,
        status: AgentStatus,
        on_unhealthy: Callable[[str, str], None],
        *,
        grace: float,
        clock: Callable[[], float] = time.monotonic,
        max_workers: int = 16,
        on_healthy: Callable[[str], None] | None = None,
    ) -> None:
        self._status = status
        self._on_unhealthy = on_unhealthy
        self._on_healthy = on_healthy
        self._grace = grace
        self._clock = clock
        self._max_workers = max_workers
        self._cond = threading.Condition()
        self._watches: dict[str, _Watch] = {}
        self._busy: set[str] = set()  # services with a probe in flight
        self._stopping = False
        self._thread: threading.Thread | None = None

    def set_targets(self, targets: Mapping[str, Target]) -> None:
        """Monitor exactly ``targets`` (by service name) from now on.

        A new service gets its grace period from now. A changed target applies
        at its next probe; its failure count is kept only when it still probes
        the same type, host and port.
        """
        with self._cond:
            now = self._clock()
            for name in set(self._watches) - set(targets):
                del self._watches[name]
            for name, target in targets.items():
                watch = self._watches.get(name)
                if watch is None:
                    self._watches[name] = _Watch(target, now, now + self._grace)
                    self._record(name, self._watches[name])
                elif watch.target != target:
                    same = watch.target.same_endpoint(target)
                    watch.target = target
                    if not same:
                        self._restart_streak(name, watch)
            self._cond.notify()

    def started(self, service: str, at: float | None = None) -> None:
        """The VM of ``service`` (re)started at ``at``: start a new grace period.

        Services not monitored are ignored.
        """
        with self._cond:
            watch = self._watches.get(service)
            if watch is None:
                return
            watch.probes_from = self._clock() if at is None else at
            watch.grace_until = watch.probes_from + self._grace
            watch.last_probe = None
            self._restart_streak(service, watch)
            self._cond.notify()

    def start(self) -> None:
        """Start the scheduler thread; probes run on threads it starts."""
        with self._cond:
            if self._thread is not None:
                raise RuntimeError("health monitor already started")
            self._stopping = False
            self._thread = threading.Thread(
                target=self._run, name="health-scheduler", daemon=True
            )
        self._thread.start()

    def stop(self) -> None:
        """Stop probing; waits for the scheduler and the probes in flight."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()

    def _restart_streak(self, name: str, watch: _Watch) -> None:
        watch.health, watch.failures, watch.reported = "unknown", 0, False
        watch.epoch += 1
        self._record(name, watch)

    def _record(self, name: str, watch: _Watch, error: str = "") -> None:
        self._status.record_health(
            name, watch.health, failures=watch.failures, last_error=error
        )

    def _run(self) -> None:
        # Made here so its threads inherit this thread's network namespace.
        pool = ThreadPoolExecutor(self._max_workers, thread_name_prefix="health")
        try:
            with self._cond:
                while not self._stopping:
                    self._cond.wait(self._submit_due(pool))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _submit_due(self, pool: ThreadPoolExecutor) -> float | None:
        """Start the probes that are due; returns how long until the next one."""
        now = self._clock()
        wait: float | None = None
        for name, watch in self._watches.items():
            if name in self._busy:
                continue  # its end wakes the scheduler
            due = watch.due_at()
            if due > now:
                wait = due - now if wait is None else min(wait, due - now)
                continue
            watch.last_probe = now
            self._busy.add(name)
            pool.submit(self._check, name, watch.target, watch.epoch)
        return wait

    def _check(self, name: str, target: Target, epoch: int) -> None:
        try:
            try:
                reason = probe(target)
            except Exception as exc:  # a bug must not stop this service's checks
                log.exception("health probe crashed service=%s", name)
                reason = f"probe error: {type(exc).__name__}"
            callback = self._apply(name, epoch, reason)
            if callback is not None:
                callback()
        except Exception:
            log.exception("health callback failed service=%s", name)
        finally:
            with self._cond:
                self._busy.discard(name)
                self._cond.notify()

    def _apply(
        self, name: str, epoch: int, reason: str | None
    ) -> Callable[[], None] | None:
        """Count one probe result; returns the callback it calls for, if any."""
        with self._cond:
            watch = self._watches.get(name)
            if watch is None or watch.epoch != epoch or self._stopping:
                return None  # removed, restarted or retargeted meanwhile
            if reason is None:
                turned = watch.health != "healthy"
                watch.health, watch.failures, watch.reported = "healthy", 0, False
                self._record(name, watch)
                if turned:
                    log.info("service healthy service=%s", name)
                    on_healthy = self._on_healthy
                    return None if on_healthy is None else lambda: on_healthy(name)
                return None
            if watch.booting(self._clock()):
                # Still booting: show why it does not answer yet, count nothing.
                self._record(name, watch, reason)
                return None
            watch.failures += 1
            if watch.failures >= watch.target.retries:
                watch.health = "unhealthy"
            self._record(name, watch, reason)
            if watch.health != "unhealthy" or watch.reported:
                return None
            watch.reported = True
            log.warning(
                "service unhealthy service=%s failures=%d reason=%s",
                name,
                watch.failures,
                reason,
            )
            return lambda: self._on_unhealthy(name, reason)
