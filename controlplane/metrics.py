"""The control plane's ``/metrics``: Prometheus text for requests, webhooks, runs,
status reports, and nodes counted from the database at scrape time.

Counters and histograms live in prometheus-client's default registry. With
``PROMETHEUS_MULTIPROC_DIR`` set (before the process starts: prometheus-client
reads it on import), every process writes its values to files in that directory
and a scrape adds up the files of all of them: gunicorn's workers, and Celery
workers on the same host that share the directory. Without it, a scrape shows the
answering process alone.

Who may scrape is decided by :func:`may_read_metrics`; docs/deployment.md has the
rule for operators.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.utils import timezone
from django.views.decorators.http import require_safe
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# A node that reported within this long counts as seen; agents report at least
# every heartbeat_interval (30 s by default), so 90 s allows two missed reports.
SEEN_WITHIN = timedelta(seconds=90)
STATUS_VIEW = "api:node-status"
UNMATCHED_VIEW = "<unmatched>"
# Anything else is counted as "other", so odd methods cannot add label values.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RUN_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
DENIED = (
    "/metrics is served to loopback, to a logged-in user, or with "
    "Authorization: Bearer <FIREWORK_METRICS_TOKEN>"
)

REQUESTS = Counter(
    "firework_http_requests",
    "HTTP requests answered, by view name, method and status code.",
    ["view", "method", "status"],
)
REQUEST_SECONDS = Histogram(
    "firework_http_request_duration_seconds",
    "Time to answer an HTTP request, by view name and method.",
    ["view", "method"],
    buckets=REQUEST_BUCKETS,
)
WEBHOOK_DELIVERIES = Counter(
    "firework_webhook_deliveries",
    "GitHub webhook deliveries, by outcome and status code.",
    ["outcome", "status"],
)
RUNS = Counter(
    "firework_enrichment_runs",
    "Enrichment runs that ended, by the revision's status.",
    ["status"],
)
RUN_SECONDS = Histogram(
    "firework_enrichment_run_duration_seconds",
    "Time from a run's start to its end, by the revision's status.",
    ["status"],
    buckets=RUN_BUCKETS,
)
REPORTS = Counter(
    "firework_node_reports",
    "Node status reports received, by outcome: ok, or the refusal's status code.",
    ["outcome"],
)
REPORT_SECONDS = Histogram(
    "firework_node_report_ingest_duration_seconds",
    "Time to answer a status report that was stored.",
    buckets=REQUEST_BUCKETS,
)


def observe_request(request: HttpRequest, status: int, seconds: float) -> None:
    """Count one answered request, and a status report when it was one."""
    match = request.resolver_match
    view = match.view_name if match is not None else UNMATCHED_VIEW
    method = request.method if request.method in METHODS else "other"
    REQUESTS.labels(view, method, str(status)).inc()
    REQUEST_SECONDS.labels(view, method).observe(seconds)
    if view == STATUS_VIEW and method == "POST":
        report_received(status, seconds)


def report_received(status: int, seconds: float) -> None:
    """Count a status report; only stored ones go into the latency histogram."""
    if 200 <= status < 300:
        REPORTS.labels("ok").inc()
        REPORT_SECONDS.observe(seconds)
    else:
        REPORTS.labels(str(status)).inc()


def webhook_delivered(status: int, body: Mapping[str, Any]) -> None:
    """Count a webhook delivery by what its answer says happened."""
    outcome = body.get("status")
    if not isinstance(outcome, str):
        outcome = "not_queued" if status == 503 else "refused"
    WEBHOOK_DELIVERIES.labels(outcome, str(status)).inc()


def run_finished(status: str, seconds: float | None) -> None:
    """Count a run that ended; ``seconds`` is ``None`` for one that never started."""
    RUNS.labels(str(status)).inc()
    if seconds is not None:
        RUN_SECONDS.labels(str(status)).observe(seconds)


class RequestMetricsMiddleware:
    """Times every request and counts it by view name, method and status.

    Listed first in ``MIDDLEWARE``, so the time includes all other middleware.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        started = time.perf_counter()
        response = self.get_response(request)
        observe_request(request, response.status_code, time.perf_counter() - started)
        return response


class _ThisProcess(Collector):
    """The default registry's metrics, for a registry built per scrape."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


class NodeCollector(Collector):
    """Node counts read from the database on every scrape."""

    def collect(self) -> Iterator[Metric]:
        """Yield the node gauges; nothing when the database cannot answer."""
        from controlplane.models import Node

        since = timezone.now() - SEEN_WITHIN
        try:
            counts = Node.objects.aggregate(
                total=Count("pk"), seen=Count("pk", filter=Q(last_seen_at__gte=since))
            )
            states = _nodes_by_state()
        except DatabaseError as exc:
            log.warning("metrics node gauges skipped error=%s", type(exc).__name__)
            return
        yield GaugeMetricFamily(
            "firework_nodes", "Registered nodes.", value=counts["total"]
        )
        yield GaugeMetricFamily(
            "firework_nodes_seen",
            f"Nodes that reported within the last {SEEN_WITHIN.seconds} s.",
            value=counts["seen"],
        )
        if states is not None:
            family = GaugeMetricFamily(
                "firework_nodes_by_state",
                "Nodes by derived state (controlplane.nodestatus).",
                labels=["state"],
            )
            for state, count in sorted(states.items()):
                family.add_metric([state], count)
            yield family


def _nodes_by_state() -> Tally[str] | None:
    """Nodes per derived state, or ``None`` where nodestatus does not offer it."""
    try:
        from controlplane.nodestatus import (  # type: ignore[attr-defined,unused-ignore]
            node_views,
        )
    except ImportError:
        return None
    try:
        views = node_views()
    except DatabaseError:
        raise
    except Exception as exc:  # a scrape must still answer; the counts are kept
        log.warning("metrics node states skipped error=%s", type(exc).__name__)
        return None
    return Tally(_state_of(view) for view in views)


def _state_of(view: Any) -> str:
    """A view's derived state: ``status`` on a NodeView, else ``state``."""
    state = getattr(view, "status", None) or getattr(view, "state", "")
    return str(getattr(state, "value", state))


def scrape_registry() -> CollectorRegistry:
    """A registry holding what one scrape shows: every process's, or this one's."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(_ThisProcess())
    registry.register(NodeCollector())
    return registry


def may_read_metrics(request: HttpRequest) -> bool:
    """The bearer token, a logged-in user, or a direct request from loopback."""
    token: str = getattr(settings, "FIREWORK_METRICS_TOKEN", "")
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, given = header.partition(" ")
    if token and scheme.lower() == "bearer" and given.strip():
        return hmac.compare_digest(given.strip().encode(), token.encode())
    if request.user.is_authenticated:
        return True
    return bool(getattr(settings, "FIREWORK_METRICS_LOOPBACK", True)) and _loopback(
        request
    )


# A proxy on this host makes every client look local; these say one was in between.
_PROXY_HEADERS = ("HTTP_FORWARDED", "HTTP_X_FORWARDED_FOR", "HTTP_X_REAL_IP")


def _loopback(request: HttpRequest) -> bool:
    if any(name in request.META for name in _PROXY_HEADERS):
        return False
    try:
        address = ipaddress.ip_address(str(request.META.get("REMOTE_ADDR", "")))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback


@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus text for whoever :func:`may_read_metrics` lets in; else 403."""
    if not may_read_metrics(request):
        return JsonResponse({"error": DENIED}, status=403)
    body = generate_latest(scrape_registry())
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
