"""The agent's HTTP API: ``/healthz``, ``/status``, ``/health`` and ``/metrics``.

The first three keep the Go original's response shapes (fields are only added);
``/metrics`` is Prometheus text built from an :class:`AgentStatus` snapshot at
scrape time, from a registry private to the server so that two servers in one
process (as in tests) never share or clash on metrics.
"""

from __future__ import annotations

import json
import logging
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from nodeagent.status import (
    HEALTH_STATES,
    PHASES,
    SERVICE_STATES,
    AgentStatus,
    HealthStatus,
    ServiceStatus,
    StatusSnapshot,
)

log = logging.getLogger(__name__)

JSON_TYPE = "application/json"


def rfc3339(moment: datetime | None) -> str | None:
    """Format ``moment`` in UTC like ``2026-02-05T12:00:00Z``; ``None`` stays."""
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_listen_addr(addr: str) -> tuple[str, int]:
    """Split ``host:port`` (``:port`` = every interface, ``[::1]:port``)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{addr!r} is not an address like 127.0.0.1:8080 or :8080")
    return host.removeprefix("[").removesuffix("]"), int(port)


def health_document(health: HealthStatus) -> dict[str, Any]:
    """One service's health as in the original's ``/status``."""
    return {
        "status": health.status,
        "last_checked": rfc3339(health.last_checked),
        "failures": health.failures,
        "last_error": health.last_error,
    }


def service_document(service: ServiceStatus) -> dict[str, Any]:
    """One entry of ``services`` in ``/status``."""
    return {
        "name": service.name,
        "state": service.state,
        # The original reports an int; 0 means "no process", as there.
        "pid": service.pid or 0,
        "health": health_document(service.health),
        "guest_ip": service.guest_ip,
        "restarts": service.restarts,
        "last_error": service.last_error,
        "next_restart_at": rfc3339(service.next_restart_at),
    }


def status_document(snap: StatusSnapshot) -> dict[str, Any]:
    """The ``/status`` body: the original's fields first, then ours."""
    return {
        "node": snap.node,
        "last_revision": snap.last_revision,
        "services": [service_document(s) for s in snap.services],
        "phase": snap.phase,
        "labels": list(snap.labels),
        "revisions": dict(snap.revisions),
        "stale": snap.stale,
        "stale_reason": snap.stale_reason,
        "stale_since": rfc3339(snap.stale_since),
        "time": rfc3339(snap.taken_at),
    }


def health_checks_document(snap: StatusSnapshot) -> dict[str, Any]:
    """The ``/health`` body: like the original, only services that have a check."""
    checks = {
        s.name: {
            "status": s.health.status,
            "failures": s.health.failures,
            "last_error": s.health.last_error,
            "last_checked": rfc3339(s.health.last_checked),
        }
        for s in snap.services
        if s.health.status != "not_configured"
    }
    return {"checks": checks}


class StatusCollector(Collector):
    """Prometheus metrics computed from a fresh status snapshot on every scrape."""

    def __init__(self, status: AgentStatus) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family from one snapshot."""
        snap = self.status.snapshot()
        yield from _node_metrics(snap)
        yield from _service_metrics(snap)
        yield from _tick_metrics(snap)


def _node_metrics(snap: StatusSnapshot) -> Iterator[Metric]:
    info = GaugeMetricFamily(
        "firework_agent_info",
        "The node and its applied revision (always 1).",
        labels=["node", "revision"],
    )
    info.add_metric([snap.node, snap.last_revision], 1)
    yield info
    phase = GaugeMetricFamily(
        "firework_agent_phase", "1 for the agent's current phase.", labels=["phase"]
    )
    for name in PHASES:
        phase.add_metric([name], 1 if snap.phase == name else 0)
    yield phase
    yield GaugeMetricFamily(
        "firework_agent_config_stale",
        "1 when the agent runs the last good config instead of a fresh one.",
        value=1 if snap.stale else 0,
    )


def _service_metrics(snap: StatusSnapshot) -> Iterator[Metric]:
    states = GaugeMetricFamily(
        "firework_agent_services", "Services by state.", labels=["state"]
    )
    for state in SERVICE_STATES:
        states.add_metric([state], sum(s.state == state for s in snap.services))
    yield states
    health = GaugeMetricFamily(
        "firework_agent_services_health",
        "Services by health check status.",
        labels=["status"],
    )
    for status in HEALTH_STATES:
        count = sum(s.health.status == status for s in snap.services)
        health.add_metric([status], count)
    yield health
    restarts = CounterMetricFamily(
        "firework_agent_service_restarts",
        "Restarts of each service since the agent started.",
        labels=["service"],
    )
    failures = GaugeMetricFamily(
        "firework_agent_service_health_failures",
        "Consecutive failed health checks of each service.",
        labels=["service"],
    )
    state_of = GaugeMetricFamily(
        "firework_agent_service_state",
        "1 for the state each service is in.",
        labels=["service", "state"],
    )
    health_of = GaugeMetricFamily(
        "firework_agent_service_health",
        "1 for the health check status of each service.",
        labels=["service", "status"],
    )
    checked = GaugeMetricFamily(
        "firework_agent_service_last_check_timestamp_seconds",
        "When each service was last probed (Unix time).",
        labels=["service"],
    )
    next_restart = GaugeMetricFamily(
        "firework_agent_service_next_restart_timestamp_seconds",
        "When a restart held back by its backoff is due (Unix time).",
        labels=["service"],
    )
    for service in snap.services:
        restarts.add_metric([service.name], service.restarts)
        failures.add_metric([service.name], service.health.failures)
        state_of.add_metric([service.name, service.state], 1)
        health_of.add_metric([service.name, service.health.status], 1)
        if service.health.last_checked is not None:
            checked.add_metric([service.name], service.health.last_checked.timestamp())
        if service.next_restart_at is not None:
            next_restart.add_metric([service.name], service.next_restart_at.timestamp())
    yield from (restarts, failures, state_of, health_of, checked, next_restart)


def _tick_metrics(snap: StatusSnapshot) -> Iterator[Metric]:
    yield CounterMetricFamily(
        "firework_agent_ticks", "Reconcile ticks run.", value=snap.ticks.count
    )
    yield CounterMetricFamily(
        "firework_agent_tick_seconds",
        "Time spent in reconcile ticks.",
        value=snap.ticks.total_seconds,
    )
    if snap.ticks.last_seconds is not None:
        yield GaugeMetricFamily(
            "firework_agent_last_tick_duration_seconds",
            "Duration of the latest reconcile tick.",
            value=snap.ticks.last_seconds,
        )


class ApiHTTPServer(ThreadingHTTPServer):
    """The threaded HTTP server, carrying the status and the metrics registry."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], status: AgentStatus) -> None:
        self.status = status
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatusCollector(status))
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, ApiHandler)

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse-DNS ``getfqdn`` lookup.

        On a host whose resolver is unreachable that lookup blocks for seconds,
        delaying the agent's start for nothing: the name is never used.
        """
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


class ApiHandler(BaseHTTPRequestHandler):
    """Answers the four GET endpoints; JSON errors for anything else."""

    server: ApiHTTPServer
    server_version = "firework-agent"

    def do_GET(self) -> None:
        """Route a GET request to its endpoint."""
        path = self.path.split("?", 1)[0]
        route = self._routes().get(path)
        if route is None:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"not found: {path}"})
            return
        try:
            route()
        except Exception:
            # One bad snapshot must not kill the server thread or leak a trace.
            log.exception("api request failed path=%s", path)
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"})

    def _method_not_allowed(self) -> None:
        # The body, if any, is never read: nothing but GET is served.
        self.close_connection = True
        self._json(
            HTTPStatus.METHOD_NOT_ALLOWED,
            {"error": f"method {self.command} not allowed"},
            extra={"Allow": "GET"},
        )

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _method_not_allowed
    do_HEAD = _method_not_allowed

    def _routes(self) -> dict[str, Callable[[], None]]:
        return {
            "/healthz": self._healthz,
            "/status": self._status,
            "/health": self._health,
            "/metrics": self._metrics,
        }

    def _healthz(self) -> None:
        now = rfc3339(datetime.now(UTC))
        self._json(HTTPStatus.OK, {"status": "ok", "time": now})

    def _status(self) -> None:
        self._json(HTTPStatus.OK, status_document(self.server.status.snapshot()))

    def _health(self) -> None:
        snap = self.server.status.snapshot()
        self._json(HTTPStatus.OK, health_checks_document(snap))

    def _metrics(self) -> None:
        self._send(
            HTTPStatus.OK, CONTENT_TYPE_LATEST, generate_latest(self.server.registry)
        )

    def _json(
        self,
        code: HTTPStatus,
        document: dict[str, Any],
        extra: dict[str, str] | None = None,
    ) -> None:
        body = json.dumps(document).encode() + b"\n"
        self._send(code, JSON_TYPE, body, extra)

    def _send(
        self,
        code: HTTPStatus,
        content_type: str,
        body: bytes,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Send the access log to ``logging`` at debug level, not to stderr."""
        log.debug("api %s client=%s", format % args, self.client_address[0])

    def log_error(self, format: str, *args: Any) -> None:
        """Send protocol errors (bad request lines) to ``logging``."""
        log.info("api error %s client=%s", format % args, self.client_address[0])


class ApiServer:
    """A running API server on its own daemon thread."""

    def __init__(self, server: ApiHTTPServer, poll_interval: float = 0.5) -> None:
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            # How often the loop checks for shutdown: the upper bound of close().
            kwargs={"poll_interval": poll_interval},
            name="firework-agent-api",
            daemon=True,
        )
        self._closed = False
        self._thread.start()

    @property
    def host(self) -> str:
        """The address the server is bound to."""
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        """The bound port (useful after binding port 0)."""
        return int(self._server.server_address[1])

    def close(self) -> None:
        """Stop serving, free the port and join the thread; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        log.info("api stopped port=%d", self.port)


def start_api(
    addr: str, status: AgentStatus, *, poll_interval: float = 0.5
) -> ApiServer:
    """Serve the API on ``addr`` (``host:port`` or ``:port``) in the background.

    ``close()`` takes up to ``poll_interval`` seconds; tests pass a short one.
    """
    server = ApiHTTPServer(parse_listen_addr(addr), status)
    api = ApiServer(server, poll_interval)
    log.info("api listening addr=%s port=%d", addr, api.port)
    return api
