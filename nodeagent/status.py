"""What the agent is doing right now, shared between its loop and its HTTP API.

The agent loop writes to one :class:`AgentStatus`; the API reads it through
:meth:`AgentStatus.snapshot`, which returns frozen data copied under the same lock
as every update, so a response never mixes two states of the node.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Final, Literal

Phase = Literal["starting", "running", "stopping"]
ServiceState = Literal["running", "starting", "stopped", "failed", "crashloop"]
HealthState = Literal["healthy", "unhealthy", "unknown", "not_configured"]

PHASES: Final[tuple[Phase, ...]] = ("starting", "running", "stopping")
SERVICE_STATES: Final[tuple[ServiceState, ...]] = (
    "running",
    "starting",
    "stopped",
    "failed",
    "crashloop",
)
HEALTH_STATES: Final[tuple[HealthState, ...]] = (
    "healthy",
    "unhealthy",
    "unknown",
    "not_configured",
)


class _Keep(enum.Enum):
    """Marks an argument of :meth:`AgentStatus.upsert_service` as "leave as is"."""

    KEEP = enum.auto()


KEEP: Final = _Keep.KEEP


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class HealthStatus:
    """The latest health check result of one service."""

    status: HealthState = "not_configured"
    last_checked: datetime | None = None
    failures: int = 0
    last_error: str = ""


@dataclass(frozen=True)
class ServiceStatus:
    """One service as the agent last saw it."""

    name: str
    state: ServiceState = "starting"
    pid: int | None = None
    guest_ip: str = ""
    restarts: int = 0
    last_error: str = ""
    health: HealthStatus = field(default_factory=HealthStatus)
    next_restart_at: datetime | None = None


@dataclass(frozen=True)
class TickStats:
    """How many reconcile ticks ran and how long they took."""

    count: int = 0
    total_seconds: float = 0.0
    last_seconds: float | None = None
    last_at: datetime | None = None


@dataclass(frozen=True)
class StatusSnapshot:
    """A consistent copy of the whole agent status at one instant."""

    node: str
    labels: tuple[str, ...]
    phase: Phase
    revisions: Mapping[str, str]
    stale: bool
    stale_reason: str
    stale_since: datetime | None
    services: tuple[ServiceStatus, ...]
    ticks: TickStats
    taken_at: datetime

    @property
    def last_revision(self) -> str:
        """The applied revision as one string, like the original's field.

        With one label it is that label's revision; with several, each label's
        revision as ``label=revision`` joined by commas in label order, so a
        change of any label changes the value.
        """
        known = [label for label in self.labels if label in self.revisions]
        extra = sorted(set(self.revisions) - set(known))
        order = known + extra
        if len(order) == 1:
            return self.revisions[order[0]]
        return ",".join(f"{label}={self.revisions[label]}" for label in order)


class AgentStatus:
    """Thread-safe holder of the agent's status; the loop writes, the API reads."""

    def __init__(self, node: str = "", labels: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._node = node
        self._labels = tuple(labels)
        self._phase: Phase = "starting"
        self._revisions: dict[str, str] = {}
        self._stale = False
        self._stale_reason = ""
        self._stale_since: datetime | None = None
        self._services: dict[str, ServiceStatus] = {}
        self._ticks = TickStats()
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (outside the lock) whenever a service changes its
        state, pid or health verdict, appears or goes: the reporter sends such
        moments (a VM restarting) as they happen, not only after the tick."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    def set_config(self, node: str, labels: Iterable[str]) -> None:
        """Record the node name and the labels (node types) it fetches."""
        with self._lock:
            self._node = node
            self._labels = tuple(labels)

    def set_phase(self, phase: Phase) -> None:
        """Record whether the agent is starting, running or stopping."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        with self._lock:
            self._phase = phase

    def set_revisions(self, revisions: Mapping[str, str]) -> None:
        """Record the applied revision of each label, replacing the previous set."""
        with self._lock:
            self._revisions = dict(revisions)

    def set_stale(self, reason: str, since: datetime | None = None) -> None:
        """Mark the config as stale; ``since`` is kept from the first call."""
        with self._lock:
            # The start of the outage matters, not the latest retry.
            if not self._stale:
                self._stale_since = since or _now()
            self._stale = True
            self._stale_reason = reason

    def clear_stale(self) -> None:
        """The current config is fresh again."""
        with self._lock:
            self._stale = False
            self._stale_reason = ""
            self._stale_since = None

    def upsert_service(
        self,
        name: str,
        *,
        state: ServiceState | _Keep = KEEP,
        pid: int | _Keep | None = KEEP,
        guest_ip: str | _Keep = KEEP,
        restarts: int | _Keep = KEEP,
        last_error: str | _Keep = KEEP,
        health_configured: bool | _Keep = KEEP,
        next_restart_at: datetime | _Keep | None = KEEP,
    ) -> ServiceStatus:
        """Add a service or change the given fields of it; returns the new value.

        ``health_configured=False`` reports ``not_configured``; ``True`` turns a
        ``not_configured`` service into ``unknown`` until the first check result.
        """
        if not isinstance(state, _Keep) and state not in SERVICE_STATES:
            raise ValueError(f"service {name}: unknown state {state!r}")
        with self._lock:
            current = self._services.get(name) or ServiceStatus(name=name)
            changes: dict[str, object] = {
                "state": state,
                "pid": pid,
                "guest_ip": guest_ip,
                "restarts": restarts,
                "last_error": last_error,
                "next_restart_at": next_restart_at,
            }
            given = {k: v for k, v in changes.items() if not isinstance(v, _Keep)}
            updated = replace(current, **given)  # type: ignore[arg-type]
            if not isinstance(health_configured, _Keep):
                updated = replace(
                    updated, health=_configured(updated.health, health_configured)
                )
            self._services[name] = updated
        if (current.state, current.pid) != (updated.state, updated.pid):
            self._changed()
        return updated

    def record_restart(self, name: str, error: str = "") -> None:
        """Count one restart of ``name``, keeping ``error`` as its last error."""
        with self._lock:
            current = self._services.get(name) or ServiceStatus(name=name)
            self._services[name] = replace(
                current,
                restarts=current.restarts + 1,
                last_error=error or current.last_error,
            )
        self._changed()

    def remove_service(self, name: str) -> None:
        """Forget a service that no longer belongs on this node."""
        with self._lock:
            gone = self._services.pop(name, None)
        if gone is not None:
            self._changed()

    def record_health(
        self,
        name: str,
        status: HealthState,
        *,
        failures: int,
        last_error: str = "",
        checked_at: datetime | None = None,
    ) -> None:
        """Store the result of a health check of ``name``."""
        if status not in HEALTH_STATES:
            raise ValueError(f"service {name}: unknown health status {status!r}")
        with self._lock:
            current = self._services.get(name) or ServiceStatus(name=name)
            health = HealthStatus(
                status=status,
                last_checked=checked_at or _now(),
                failures=failures,
                last_error=last_error,
            )
            self._services[name] = replace(current, health=health)
        if current.health.status != status:
            self._changed()

    def record_tick(self, seconds: float) -> None:
        """Count one reconcile tick that took ``seconds``."""
        with self._lock:
            ticks = self._ticks
            self._ticks = TickStats(
                count=ticks.count + 1,
                total_seconds=ticks.total_seconds + seconds,
                last_seconds=seconds,
                last_at=_now(),
            )

    def snapshot(self) -> StatusSnapshot:
        """Return a consistent, immutable copy of everything above."""
        with self._lock:
            # Every ServiceStatus is frozen, so copying the containers is enough.
            return StatusSnapshot(
                node=self._node,
                labels=self._labels,
                phase=self._phase,
                revisions=dict(self._revisions),
                stale=self._stale,
                stale_reason=self._stale_reason,
                stale_since=self._stale_since,
                services=tuple(self._services[name] for name in sorted(self._services)),
                ticks=self._ticks,
                taken_at=_now(),
            )


def _configured(health: HealthStatus, configured: bool) -> HealthStatus:
    if not configured:
        return HealthStatus()
    if health.status == "not_configured":
        return HealthStatus(status="unknown")
    return health
