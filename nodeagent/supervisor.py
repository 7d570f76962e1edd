"""Keeping started VMs up: health checks, exits noticed at once, restart backoff.

:class:`Supervisor` joins the health monitor (:mod:`nodeagent.health`), the exit
watcher (:mod:`nodeagent.watch`) and the restart policy
(:mod:`nodeagent.restarts`) for the agent loop. Both watchers run in their own
threads and only *wake* the loop; every restart is still decided and carried out
by a tick, so there is one place that starts and stops VMs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime, timedelta

from nodeagent.config import AgentConfig
from nodeagent.durations import parse_duration
from nodeagent.health import HealthMonitor, Target, target_for
from nodeagent.reconcile import Action
from nodeagent.resolve import Prepared
from nodeagent.restarts import RestartPolicy
from nodeagent.status import AgentStatus, ServiceState
from nodeagent.watch import ExitWatcher

log = logging.getLogger(__name__)

NOT_RUNNING = "not running"
UNHEALTHY = "unhealthy"


class Supervisor:
    """Health checks, exit watching and restart pacing for one agent."""

    def __init__(
        self,
        config: AgentConfig,
        status: AgentStatus,
        wake: Callable[[], None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.status = status
        self.wake = wake
        self.clock = clock
        self.policy = RestartPolicy.from_config(config)
        self.health = (
            HealthMonitor(
                status,
                self._on_unhealthy,
                grace=parse_duration(config.health_grace),
                on_healthy=self._on_healthy,
            )
            if config.enable_health_checks
            else None
        )
        self.watcher = ExitWatcher(self._on_exit)
        self._lock = threading.Lock()
        self._unhealthy: dict[str, str] = {}
        self._failed_starts: set[str] = set()
        self._targets: dict[str, Target] = {}
        self._monitored_for: Mapping[str, Prepared] | None = None
        self._monitored_running: frozenset[str] = frozenset()
        self._held: dict[str, float] = {}  # service -> when its restart is due

    # -- threads

    def start(self) -> None:
        """Start the watcher and health monitor threads."""
        self.watcher.start()
        if self.health is not None:
            self.health.start()

    def stop(self) -> None:
        """Stop both threads (VMs are not touched)."""
        self.watcher.stop()
        if self.health is not None:
            self.health.stop()

    def _on_exit(self, service: str, pid: int) -> None:
        log.warning("vm exited service=%s pid=%s", service, pid)
        self.wake()

    def _on_unhealthy(self, service: str, reason: str) -> None:
        log.warning("service unhealthy service=%s reason=%s", service, reason)
        with self._lock:
            self._unhealthy[service] = reason
        self.wake()

    def _on_healthy(self, service: str) -> None:
        # A pass after the grace period: the next crash starts from the
        # initial delay again, and a crash loop is over.
        self.policy.reset(service)
        self.status.upsert_service(service, state="running", next_restart_at=None)

    # -- decisions, in the tick

    def unhealthy_recreates(
        self, running: Collection[str], planned: Sequence[Action]
    ) -> list[Action]:
        """Recreates for running services whose checks failed ``retries`` times.

        A service stays marked until its restart actually happens (see
        :meth:`gate`): one held back by its backoff is restarted when due, even
        though its checks report the failure only once.
        """
        with self._lock:
            unhealthy = dict(self._unhealthy)
        acted = {a.service for a in planned}
        return [
            Action("recreate", name, f"{UNHEALTHY}: {reason}")
            for name, reason in sorted(unhealthy.items())
            if name in running and name not in acted
        ]

    def gate(self, actions: Sequence[Action]) -> list[Action]:
        """The actions allowed now; restarts wait for their backoff.

        Restarts are recreates of crashed or unhealthy VMs and retries of starts
        that failed. Config changes and removals are never held back.
        """
        now = self.clock()
        allowed = []
        for action in actions:
            if not self._is_restart(action):
                allowed.append(action)
                continue
            if not self.policy.due(action.service, now):
                self._report_held(action)
                due = self.policy.next_at(action.service)
                if due is not None:
                    self._held[action.service] = due
                continue
            self._held.pop(action.service, None)
            with self._lock:
                self._unhealthy.pop(action.service, None)
            delay = self.policy.record(action.service, now)
            self.status.record_restart(
                action.service, f"service {action.service}: {action.reason}"
            )
            log.info(
                "restart service=%s reason=%s next_delay=%.3fs",
                action.service,
                action.reason,
                delay,
            )
            allowed.append(action)
        return allowed

    def wait_for_restart(self, limit: float) -> float:
        """Seconds until the next held restart is due, at most ``limit``.

        The loop sleeps no longer than this, so a restart waiting for its
        backoff happens when the backoff ends, not at the next poll.
        """
        if not self._held:
            return limit
        return max(0.0, min(limit, min(self._held.values()) - self.clock()))

    def _is_restart(self, action: Action) -> bool:
        if action.kind == "recreate":
            return action.reason == NOT_RUNNING or action.reason.startswith(UNHEALTHY)
        return action.kind == "create" and action.service in self._failed_starts

    def _report_held(self, action: Action) -> None:
        name, now = action.service, self.clock()
        next_at = self.policy.next_at(name)
        wall = None
        if next_at is not None:
            wall = datetime.now(UTC) + timedelta(seconds=max(0.0, next_at - now))
        crashloop = self.policy.crashlooping(name, now)
        if crashloop or action.reason == NOT_RUNNING or action.kind == "create":
            state: ServiceState = "crashloop" if crashloop else "failed"
            self.status.upsert_service(name, state=state, next_restart_at=wall)
        else:
            self.status.upsert_service(name, next_restart_at=wall)

    # -- what happened, after the actions

    def started(self, name: str, pid: int) -> None:
        """A VM of ``name`` runs as ``pid``: watch it, probe it after the grace."""
        self._failed_starts.discard(name)
        with self._lock:
            self._unhealthy.pop(name, None)  # a fresh VM: its checks start over
        self.watcher.watch(name, pid)
        if self.health is not None:
            self.health.started(name)
        crashloop = self.policy.crashlooping(name, self.clock())
        self.status.upsert_service(
            name, state="crashloop" if crashloop else "running", next_restart_at=None
        )

    def starting_state(self, name: str) -> ServiceState:
        """What a VM being (re)started reports: a crash loop stays one."""
        return (
            "crashloop" if self.policy.crashlooping(name, self.clock()) else "starting"
        )

    def adopted(self, name: str, pid: int) -> None:
        """A VM found running at agent start: watch it; its checks go on."""
        self.watcher.watch(name, pid)

    def start_failed(self, name: str) -> None:
        """A start failed: the next attempt is a restart, paced by the policy."""
        self._failed_starts.add(name)
        self.policy.record(name, self.clock())

    def stopped(self, name: str, *, removed: bool) -> None:
        """A VM of ``name`` stopped; ``removed`` when the service is gone."""
        self.watcher.unwatch(name)
        if removed:
            self._held.pop(name, None)
            self.policy.forget(name)
            self._failed_starts.discard(name)
            with self._lock:
                self._unhealthy.pop(name, None)

    def monitor(
        self, prepared: Mapping[str, Prepared], running: Collection[str]
    ) -> None:
        """Probe exactly the running services that have a health check.

        Called every tick; the targets are only worked out again when the
        desired state (a new mapping) or the set of running services changed.
        """
        if self.health is None:
            return
        running_now = frozenset(running)
        if prepared is self._monitored_for and running_now == self._monitored_running:
            return
        # The mapping itself is kept (not its id): a new one can never match.
        self._monitored_for, self._monitored_running = prepared, running_now
        targets = {}
        for name in running:
            p = prepared.get(name)
            if p is None or p.assigned is None:
                continue
            target = target_for(p.service, p.assigned.ip)
            if target is not None:
                targets[name] = target
        if targets != self._targets:
            self.health.set_targets(targets)
            self._targets = targets
