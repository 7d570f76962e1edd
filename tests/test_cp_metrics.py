"""The control plane's ``/metrics``: what it counts, and who may read it.

Counters live in one registry for the whole test session, so each test compares
a scrape after its requests with a scrape before them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families
from pytest_django import Settings

from controlplane import metrics
from controlplane.models import ConfigRepository, Node, Revision
from controlplane.nodetokens import issue_node_token
from tests.test_api_node_auth import report

URL = "/metrics"
ROOT = Path(__file__).resolve().parent.parent
SECRET = "carol-webhook-secret-5e1d"
METRICS_TOKEN = "scrape-token-0b7e4c"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(client: Client | None = None) -> Samples:
    response = (client or Client()).get(URL)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return parse(response.content.decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def grew(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture
def node_token(db: None) -> str:
    return issue_node_token(Node.objects.create(name="node-a"))


def post_report(token: str, body: Any, **meta: Any) -> int:
    raw = body if isinstance(body, str) else json.dumps(body)
    response = Client().generic(
        "POST",
        "/api/v1/nodes/node-a/status",
        raw,
        "application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
        **meta,
    )
    return response.status_code


def test_a_request_is_counted_by_view_method_and_status(db: None) -> None:
    before = scrape()
    assert Client().get("/healthz").status_code == 200
    after = scrape()
    labels = {"view": "controlplane:healthz", "method": "GET", "status": "200"}
    assert grew(before, after, "firework_http_requests_total", **labels) == 1
    timed = {"view": "controlplane:healthz", "method": "GET"}
    assert grew(before, after, "firework_http_request_duration_seconds_count", **timed)
    assert grew(before, after, "firework_http_request_duration_seconds_sum", **timed)


def test_an_unknown_path_is_counted_without_its_path(db: None) -> None:
    before = scrape()
    Client().get("/no/such/page/4f1c")
    after = scrape()
    labels = {"view": "<unmatched>", "method": "GET", "status": "404"}
    assert grew(before, after, "firework_http_requests_total", **labels) == 1
    assert "4f1c" not in Client().get(URL).content.decode()


def test_an_odd_method_adds_no_label_value(db: None) -> None:
    before = scrape()
    Client().generic("BREW", "/healthz")
    after = scrape()
    labels = {"view": "controlplane:healthz", "method": "other", "status": "405"}
    assert grew(before, after, "firework_http_requests_total", **labels) == 1


def test_a_stored_report_is_counted_and_timed(node_token: str) -> None:
    before = scrape()
    assert post_report(node_token, report()) == 204
    after = scrape()
    assert grew(before, after, "firework_node_reports_total", outcome="ok") == 1
    name = "firework_node_report_ingest_duration_seconds_count"
    assert grew(before, after, name) == 1


@pytest.mark.parametrize(
    ("send", "outcome"),
    [
        (lambda token: post_report(token, "[1, 2]"), "400"),
        (lambda token: post_report(token, report(services="x")), "400"),
        (lambda token: post_report("fwn_not-a-token", report()), "401"),
        (lambda token: post_report("", report()), "401"),
        (
            lambda token: post_report(token, report(), CONTENT_LENGTH=str(300_000)),
            "413",
        ),
        (lambda token: post_report(token, report(stale_reason="x" * 300_000)), "413"),
    ],
)
def test_a_refused_report_is_counted_by_status(
    node_token: str, send: Callable[[str], int], outcome: str
) -> None:
    before = scrape()
    assert send(node_token) == int(outcome)
    after = scrape()
    assert grew(before, after, "firework_node_reports_total", outcome=outcome) == 1
    assert grew(before, after, "firework_node_reports_total", outcome="ok") == 0
    name = "firework_node_report_ingest_duration_seconds_count"
    assert grew(before, after, name) == 0


def test_a_report_for_another_node_is_counted_as_403(node_token: str) -> None:
    other = issue_node_token(Node.objects.create(name="node-b"))
    before = scrape()
    assert post_report(other, report()) == 403
    after = scrape()
    assert grew(before, after, "firework_node_reports_total", outcome="403") == 1


def sign(body: bytes) -> str:
    return "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


def deliver(event: str, body: bytes, signature: str) -> int:
    response = Client().generic(
        "POST",
        "/webhooks/github/",
        body,
        "application/json",
        HTTP_X_GITHUB_EVENT=event,
        HTTP_X_GITHUB_DELIVERY="0c6e9a52-metrics",
        HTTP_X_HUB_SIGNATURE_256=signature,
    )
    return response.status_code


def test_webhook_deliveries_are_counted_by_outcome(
    db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIREWORK_TEST_CAROL_SECRET", SECRET)
    ConfigRepository.objects.create(
        name="ops",
        clone_url="http://127.0.0.1:9/acme/ops.git",
        github_full_name="acme/ops",
        branch="main",
        webhook_secret_env="FIREWORK_TEST_CAROL_SECRET",
    )
    body = b'{"zen": "Keep it logically awesome."}'
    before = scrape()
    assert deliver("ping", body, sign(body)) == 200
    assert deliver("ping", body, "sha256=" + "0" * 64) == 401
    after = scrape()
    name = "firework_webhook_deliveries_total"
    assert grew(before, after, name, outcome="pong", status="200") == 1
    assert grew(before, after, name, outcome="refused", status="401") == 1


def test_a_finished_run_is_counted_and_timed(db: None) -> None:
    before = scrape()
    metrics.run_finished(Revision.Status.SUCCEEDED, 1.5)
    metrics.run_finished(Revision.Status.FAILED, None)
    after = scrape()
    runs = "firework_enrichment_runs_total"
    assert grew(before, after, runs, status="succeeded") == 1
    assert grew(before, after, runs, status="failed") == 1
    seconds = "firework_enrichment_run_duration_seconds"
    assert grew(before, after, f"{seconds}_sum", status="succeeded") == 1.5
    assert grew(before, after, f"{seconds}_count", status="failed") == 0


def test_nodes_are_counted_from_the_database(db: None) -> None:
    now = timezone.now()
    Node.objects.create(name="fresh", last_seen_at=now - timedelta(seconds=10))
    Node.objects.create(name="quiet", last_seen_at=now - timedelta(minutes=5))
    Node.objects.create(name="never")
    samples = scrape()
    assert value(samples, "firework_nodes") == 3
    assert value(samples, "firework_nodes_seen") == 1


def test_nodes_by_state_come_from_nodestatus(
    db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    class View:
        def __init__(self, status: str) -> None:
            self.status = status

    views = [View("converged"), View("converged"), View("stale")]
    monkeypatch.setattr(
        "controlplane.nodestatus.node_views", lambda: views, raising=False
    )
    samples = scrape()
    assert value(samples, "firework_nodes_by_state", state="converged") == 2
    assert value(samples, "firework_nodes_by_state", state="stale") == 1


def test_a_broken_nodestatus_leaves_the_other_metrics(
    db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> list[Any]:
        raise RuntimeError("store unreachable")

    monkeypatch.setattr("controlplane.nodestatus.node_views", broken, raising=False)
    samples = scrape()
    assert ("firework_nodes", frozenset()) in samples
    assert not any(name == "firework_nodes_by_state" for name, _ in samples)


# --- who may read it


def get(remote: str = "127.0.0.1", **meta: Any) -> int:
    return Client(REMOTE_ADDR=remote).get(URL, **meta).status_code


@pytest.mark.parametrize(
    ("remote", "meta", "status"),
    [
        ("127.0.0.1", {}, 200),
        ("127.0.0.2", {}, 200),
        ("::1", {}, 200),
        ("::ffff:127.0.0.1", {}, 200),
        ("10.0.0.7", {}, 403),
        ("192.0.2.1", {}, 403),
        ("", {}, 403),
        # a proxy on this host: the client is somewhere else
        ("127.0.0.1", {"HTTP_X_FORWARDED_FOR": "192.0.2.1"}, 403),
        ("127.0.0.1", {"HTTP_FORWARDED": "for=192.0.2.1"}, 403),
        ("127.0.0.1", {"HTTP_X_REAL_IP": "192.0.2.1"}, 403),
        # no token is configured: a bearer header opens nothing
        ("10.0.0.7", {"HTTP_AUTHORIZATION": "Bearer anything"}, 403),
    ],
)
def test_without_a_token_only_direct_loopback_may_read(
    db: None, remote: str, meta: dict[str, str], status: int
) -> None:
    assert get(remote, **meta) == status


@pytest.mark.parametrize(
    ("remote", "authorization", "status"),
    [
        ("10.0.0.7", f"Bearer {METRICS_TOKEN}", 200),
        ("10.0.0.7", f"bearer {METRICS_TOKEN}", 200),
        ("10.0.0.7", "Bearer wrong-token", 403),
        ("10.0.0.7", f"Token {METRICS_TOKEN}", 403),
        ("10.0.0.7", "", 403),
        ("127.0.0.1", "", 200),
        ("127.0.0.1", "Bearer wrong-token", 403),
    ],
)
def test_the_metrics_token_opens_it_from_anywhere(
    db: None, settings: Settings, remote: str, authorization: str, status: int
) -> None:
    settings.FIREWORK_METRICS_TOKEN = METRICS_TOKEN
    meta = {"HTTP_AUTHORIZATION": authorization} if authorization else {}
    assert get(remote, **meta) == status


def test_loopback_can_be_turned_off(db: None, settings: Settings) -> None:
    settings.FIREWORK_METRICS_LOOPBACK = False
    assert get("127.0.0.1") == 403


def test_a_logged_in_user_may_read_from_anywhere(db: None) -> None:
    client = Client(REMOTE_ADDR="192.0.2.1")
    client.force_login(User.objects.create_user("bob"))
    assert client.get(URL).status_code == 200


def test_a_refusal_shows_no_metrics(db: None) -> None:
    response = Client(REMOTE_ADDR="192.0.2.1").get(URL)
    assert response.status_code == 403
    assert b"firework_" not in response.content
    assert "FIREWORK_METRICS_TOKEN" in response.json()["error"]


def test_only_get_and_head_are_served(db: None) -> None:
    assert Client().post(URL).status_code == 405
    assert Client().head(URL).status_code == 200


def test_the_scrape_holds_no_secret(node_token: str, settings: Settings) -> None:
    settings.FIREWORK_METRICS_TOKEN = METRICS_TOKEN
    post_report(node_token, report())
    text = Client().get(URL, HTTP_AUTHORIZATION=f"Bearer {METRICS_TOKEN}")
    body = text.content.decode()
    assert METRICS_TOKEN not in body
    assert node_token not in body
    assert settings.SECRET_KEY not in body


# --- several processes (gunicorn workers)

COUNT_ONE_REPORT = """
import django
django.setup()
from controlplane import metrics
metrics.report_received(204, 0.01)
"""
SCRAPE = """
import django
django.setup()
from prometheus_client import generate_latest
from controlplane import metrics
print(generate_latest(metrics.scrape_registry()).decode())
"""


def test_with_a_multiprocess_dir_a_scrape_adds_up_every_process(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "prometheus"
    shared.mkdir()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "firework_site.settings",
        "PROMETHEUS_MULTIPROC_DIR": str(shared),
        # an empty database: the node gauges are skipped, the rest still served
        "FIREWORK_VAR_DIR": str(tmp_path / "var"),
    }
    env.pop("DATABASE_URL", None)

    def python(code: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout

    python(COUNT_ONE_REPORT)
    python(COUNT_ONE_REPORT)
    samples = parse(python(SCRAPE))
    assert value(samples, "firework_node_reports_total", outcome="ok") == 2
    assert value(samples, "firework_node_report_ingest_duration_seconds_count") == 2
    assert not any(name == "firework_nodes" for name, _ in samples)


@pytest.mark.django_db
def test_metrics_and_healthz_are_not_redirected_to_https(settings: Settings) -> None:
    settings.SECURE_SSL_REDIRECT = True
    client = Client()  # a new handler reads the switch
    assert client.get("/metrics").status_code == 200
    assert client.get("/healthz").status_code == 200
    assert client.get("/hosts/").status_code == 301
