"""When a failed service may be restarted, and when it is crash-looping.

Pure bookkeeping: the caller passes the time (monotonic seconds) and decides what
to do with the answers. The delay before the next restart doubles with every
restart since the service was last healthy, with jitter so that services that
failed together do not all come back in the same instant.
"""

from __future__ import annotations

import math
import random
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from nodeagent.durations import parse_duration

if TYPE_CHECKING:
    from nodeagent.config import AgentConfig

JITTER: Final = (0.8, 1.2)


@dataclass
class _History:
    """The restarts of one service as the policy remembers them."""

    streak: int = 0  # restarts since the last reset
    next_at: float | None = None
    times: deque[float] = field(default_factory=deque)


class RestartPolicy:
    """Exponential backoff between restarts and crash-loop detection, per service.

    Thread-safe: the agent loop and health callbacks may call it concurrently.
    """

    def __init__(
        self,
        initial: float,
        cap: float,
        crashloop_restarts: int,
        window: float,
        *,
        rng: random.Random | None = None,
    ) -> None:
        if initial <= 0 or cap < initial:
            raise ValueError(
                f"restart backoff: need 0 < initial <= cap, got {initial}, {cap}"
            )
        if crashloop_restarts < 1 or window <= 0:
            raise ValueError(
                "crash loop: need at least 1 restart in a positive window, got "
                f"{crashloop_restarts} in {window}"
            )
        self.initial = initial
        self.cap = cap
        self.crashloop_restarts = crashloop_restarts
        self.window = window
        # jitter only spreads restarts out; nothing here needs to be unpredictable
        self._rng = rng or random.Random()  # noqa: S311
        self._lock = threading.Lock()
        self._services: dict[str, _History] = {}

    @classmethod
    def from_config(cls, config: AgentConfig) -> RestartPolicy:
        """The policy set by the agent configuration's restart keys."""
        return cls(
            parse_duration(config.restart_backoff_initial),
            parse_duration(config.restart_backoff_max),
            config.crashloop_restarts,
            parse_duration(config.crashloop_window),
        )

    def due(self, service: str, now: float) -> bool:
        """Whether ``service`` may be restarted at ``now``."""
        at = self.next_at(service)
        return at is None or now >= at

    def next_at(self, service: str) -> float | None:
        """When the next restart of ``service`` is allowed; None means now."""
        with self._lock:
            history = self._services.get(service)
            return history.next_at if history else None

    def attempts(self, service: str) -> int:
        """How many restarts of ``service`` happened since its last reset."""
        with self._lock:
            history = self._services.get(service)
            return history.streak if history else 0

    def record(self, service: str, now: float) -> float:
        """Count a restart of ``service`` at ``now``; returns the wait till the next."""
        with self._lock:
            history = self._services.setdefault(service, _History())
            history.streak += 1
            history.times.append(now)
            self._trim(history, now)
            delay = self._delay(history.streak)
            history.next_at = now + delay
            return delay

    def crashlooping(self, service: str, now: float) -> bool:
        """Whether ``service`` restarted ``crashloop_restarts`` times in the window.

        Resets do not clear this: a service that passes its health check and
        then dies again, over and over, is crash-looping too.
        """
        with self._lock:
            history = self._services.get(service)
            if history is None:
                return False
            self._trim(history, now)
            return len(history.times) >= self.crashloop_restarts

    def reset(self, service: str) -> None:
        """``service`` is healthy: its next failure is restarted at once."""
        with self._lock:
            history = self._services.get(service)
            if history is not None:
                history.streak = 0
                history.next_at = None

    def forget(self, service: str) -> None:
        """``service`` was removed from the node."""
        with self._lock:
            self._services.pop(service, None)

    def _delay(self, streak: int) -> float:
        # the exponent is bounded: 2**streak overflows a float after ~1000 restarts
        base = math.ldexp(self.initial, min(streak - 1, 64))
        return min(self.cap, min(self.cap, base) * self._rng.uniform(*JITTER))

    def _trim(self, history: _History, now: float) -> None:
        while history.times and history.times[0] <= now - self.window:
            history.times.popleft()
