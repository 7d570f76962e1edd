"""The agent's HTTP API, spoken to over real HTTP on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from nodeagent.httpapi import ApiServer, parse_listen_addr, start_api
from nodeagent.status import AgentStatus

HOST = "127.0.0.1"
POLL = 0.01  # short shutdown polling keeps close() fast in tests
ORIGINAL_SERVICE_KEYS = {"name", "state", "pid", "health"}
ORIGINAL_HEALTH_KEYS = {"status", "last_checked", "failures", "last_error"}


@pytest.fixture
def status() -> AgentStatus:
    status = AgentStatus()
    status.set_config("node-1", ["general"])
    status.set_revisions({"general": '"etag-abc123"'})
    status.set_phase("running")
    status.upsert_service("web-api", state="running", pid=12345, guest_ip="172.16.0.2")
    status.upsert_service("web-api", health_configured=True)
    status.record_health("web-api", "healthy", failures=0)
    status.upsert_service("worker", state="crashloop", pid=None, guest_ip="172.16.0.3")
    status.record_restart("worker", "service worker: exited with status 1")
    status.record_restart("worker")
    return status


@pytest.fixture
def api(status: AgentStatus) -> Iterator[ApiServer]:
    server = start_api(f"{HOST}:0", status, poll_interval=POLL)
    yield server
    server.close()


@pytest.fixture
def client(api: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://{HOST}:{api.port}", timeout=5) as client:
        yield client


def metrics(
    client: httpx.Client,
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    values = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            values[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return values


def is_rfc3339_utc(value: Any) -> bool:
    if not isinstance(value, str) or not value.endswith("Z"):
        return False
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed.tzinfo is not None


def test_healthz_says_ok_with_utc_time(client: httpx.Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["status"] == "ok"
    assert is_rfc3339_utc(body["time"])
    moment = datetime.fromisoformat(body["time"].replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - moment).total_seconds()) < 5


def test_status_keeps_every_field_of_the_original(client: httpx.Client) -> None:
    body = client.get("/status").json()
    assert body["node"] == "node-1"
    assert body["last_revision"] == '"etag-abc123"'
    names = [s["name"] for s in body["services"]]
    assert names == ["web-api", "worker"]
    for service in body["services"]:
        assert service.keys() >= ORIGINAL_SERVICE_KEYS
        assert service["health"].keys() >= ORIGINAL_HEALTH_KEYS
        assert isinstance(service["pid"], int)
        assert isinstance(service["health"]["failures"], int)
        assert isinstance(service["health"]["last_error"], str)
    web, worker = body["services"]
    assert web["state"] == "running"
    assert web["pid"] == 12345
    assert web["health"]["status"] == "healthy"
    assert is_rfc3339_utc(web["health"]["last_checked"])
    # No process is reported as pid 0, as the original's int field did.
    assert worker["pid"] == 0
    assert worker["health"]["status"] == "not_configured"
    assert worker["health"]["last_checked"] is None


def test_status_adds_phase_labels_revisions_and_service_details(
    client: httpx.Client,
) -> None:
    body = client.get("/status").json()
    assert body["phase"] == "running"
    assert body["labels"] == ["general"]
    assert body["revisions"] == {"general": '"etag-abc123"'}
    assert body["stale"] is False
    assert body["stale_reason"] == ""
    assert body["stale_since"] is None
    web, worker = body["services"]
    assert web["guest_ip"] == "172.16.0.2"
    assert web["restarts"] == 0
    assert worker["state"] == "crashloop"
    assert worker["restarts"] == 2
    assert worker["last_error"] == "service worker: exited with status 1"


def test_status_reports_stale_config_with_reason_and_since(
    client: httpx.Client, status: AgentStatus
) -> None:
    since = datetime(2026, 2, 5, 12, 0, tzinfo=UTC)
    status.set_stale("config_fetch_failed: connection refused", since=since)
    status.set_stale("config_fetch_failed: timed out")
    body = client.get("/status").json()
    assert body["stale"] is True
    assert body["stale_reason"] == "config_fetch_failed: timed out"
    # The outage started at the first failure, not the latest retry.
    assert body["stale_since"] == "2026-02-05T12:00:00Z"
    assert metrics(client)["firework_agent_config_stale", ()] == 1

    status.clear_stale()
    body = client.get("/status").json()
    assert (body["stale"], body["stale_reason"], body["stale_since"]) == (
        False,
        "",
        None,
    )
    assert metrics(client)["firework_agent_config_stale", ()] == 0


def test_last_revision_joins_several_labels_in_label_order(
    client: httpx.Client, status: AgentStatus
) -> None:
    status.set_config("node-1", ["gpu", "general"])
    status.set_revisions({"general": "abc", "gpu": "def"})
    body = client.get("/status").json()
    assert body["last_revision"] == "gpu=def,general=abc"
    assert body["revisions"] == {"general": "abc", "gpu": "def"}


def test_health_lists_checks_of_services_that_have_one(
    client: httpx.Client, status: AgentStatus
) -> None:
    status.upsert_service("db", state="starting", health_configured=True)
    status.record_health(
        "web-api", "unhealthy", failures=3, last_error="connection refused"
    )
    body = client.get("/health").json()
    assert set(body) == {"checks"}
    assert set(body["checks"]) == {"web-api", "db"}
    web = body["checks"]["web-api"]
    assert {"status", "failures", "last_error"} <= web.keys()
    assert (web["status"], web["failures"], web["last_error"]) == (
        "unhealthy",
        3,
        "connection refused",
    )
    assert body["checks"]["db"]["status"] == "unknown"


def test_metrics_are_derived_from_the_status(
    client: httpx.Client, status: AgentStatus
) -> None:
    status.record_tick(0.25)
    status.record_tick(0.5)
    values = metrics(client)
    assert values["firework_agent_services", (("state", "running"),)] == 1
    assert values["firework_agent_services", (("state", "crashloop"),)] == 1
    assert values["firework_agent_services", (("state", "failed"),)] == 0
    assert values["firework_agent_services_health", (("status", "healthy"),)] == 1
    assert values["firework_agent_services_health", (("status", "unhealthy"),)] == 0
    assert (
        values["firework_agent_services_health", (("status", "not_configured"),)] == 1
    )
    assert (
        values["firework_agent_service_restarts_total", (("service", "worker"),)] == 2
    )
    assert (
        values["firework_agent_service_restarts_total", (("service", "web-api"),)] == 0
    )
    assert values["firework_agent_config_stale", ()] == 0
    assert values["firework_agent_phase", (("phase", "running"),)] == 1
    assert values["firework_agent_phase", (("phase", "starting"),)] == 0
    assert values["firework_agent_ticks_total", ()] == 2
    assert values["firework_agent_tick_seconds_total", ()] == pytest.approx(0.75)
    assert values["firework_agent_last_tick_duration_seconds", ()] == 0.5
    info = values[
        "firework_agent_info", (("node", "node-1"), ("revision", '"etag-abc123"'))
    ]
    assert info == 1


def test_metrics_follow_changes_between_scrapes(
    client: httpx.Client, status: AgentStatus
) -> None:
    status.remove_service("worker")
    status.record_health("web-api", "unhealthy", failures=2, last_error="timeout")
    values = metrics(client)
    assert values["firework_agent_services", (("state", "crashloop"),)] == 0
    assert values["firework_agent_services_health", (("status", "unhealthy"),)] == 1
    assert (
        values["firework_agent_service_health_failures", (("service", "web-api"),)] == 2
    )
    assert not any(labels == (("service", "worker"),) for _, labels in values)


def test_two_servers_keep_separate_metrics() -> None:
    first, second = AgentStatus("a"), AgentStatus("b")
    first.record_tick(1.0)
    servers = [start_api(f"{HOST}:0", s, poll_interval=POLL) for s in (first, second)]
    try:
        ticks = []
        for server in servers:
            with httpx.Client(base_url=f"http://{HOST}:{server.port}") as c:
                ticks.append(metrics(c)["firework_agent_ticks_total", ()])
        assert ticks == [1, 0]
    finally:
        for server in servers:
            server.close()


@pytest.mark.parametrize("path", ["/", "/statusx", "/status/", "/nope"])
def test_unknown_paths_are_json_404(client: httpx.Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert "error" in response.json()


def test_query_strings_are_ignored(client: httpx.Client) -> None:
    assert client.get("/healthz?verbose=1").status_code == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_other_methods_are_json_405(client: httpx.Client, method: str) -> None:
    response = client.request(method, "/status")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"
    assert response.json() == {"error": f"method {method} not allowed"}


def test_head_is_405_without_a_body(client: httpx.Client) -> None:
    response = client.head("/healthz")
    assert response.status_code == 405
    assert response.content == b""


def test_requests_are_logged_through_logging_not_stderr(
    client: httpx.Client,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level("DEBUG", logger="nodeagent.httpapi")
    client.get("/healthz")
    client.get("/nope")
    assert any("GET /healthz" in r.getMessage() for r in caplog.records)
    assert capfd.readouterr().err == ""


def test_snapshots_stay_consistent_while_the_status_changes(
    client: httpx.Client, status: AgentStatus
) -> None:
    # Each round the writer updates a, then b, then c with restarts=round and
    # removes b. A consistent snapshot sees a one round ahead of c at most, b
    # only in step with a, and a's health failures from this round or the last.
    stop = threading.Event()
    errors: list[BaseException] = []

    def mutate() -> None:
        try:
            round_ = 0
            while not stop.is_set():
                round_ += 1
                for name in ("a", "b", "c"):
                    status.upsert_service(name, state="running", restarts=round_)
                status.remove_service("b")
                status.record_health("a", "unhealthy", failures=round_)
                status.record_tick(0.001)
                time.sleep(0)  # let the server threads have the GIL too
        except BaseException as exc:
            errors.append(exc)

    writer = threading.Thread(target=mutate)
    writer.start()
    checked = 0
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            services = client.get("/status").json()["services"]
            by_name = {s["name"]: s for s in services}
            if not {"a", "c"} <= by_name.keys():
                continue
            a, c = by_name["a"], by_name["c"]
            assert a["restarts"] - c["restarts"] in (0, 1)
            assert a["restarts"] - a["health"]["failures"] in (0, 1)
            if "b" in by_name:
                assert by_name["b"]["restarts"] == a["restarts"]
            checked += 1
            values = metrics(client)
            total = sum(
                v
                for (name, _), v in values.items()
                if name == "firework_agent_services"
            )
            assert total in (4, 5)  # the fixture's two services, a, c and maybe b
            assert client.get("/health").status_code == 200
    finally:
        stop.set()
        writer.join()
    assert errors == []
    assert checked >= 3


def test_concurrent_requests_are_served(client: httpx.Client, api: ApiServer) -> None:
    results: list[int] = []
    lock = threading.Lock()

    def fetch() -> None:
        with httpx.Client(base_url=f"http://{HOST}:{api.port}", timeout=5) as c:
            for path in ("/status", "/health", "/metrics", "/healthz"):
                code = c.get(path).status_code
                with lock:
                    results.append(code)

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [200] * 32


def test_close_frees_the_port_and_stops_the_thread(status: AgentStatus) -> None:
    server = start_api(f"{HOST}:0", status, poll_interval=POLL)
    port = server.port
    assert httpx.get(f"http://{HOST}:{port}/healthz").status_code == 200
    server.close()
    server.close()  # a second close is harmless
    assert not any(t.name == "firework-agent-api" for t in threading.enumerate())
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://{HOST}:{port}/healthz", timeout=1)
    # The port can be bound again right away.
    again = start_api(f"{HOST}:{port}", status, poll_interval=POLL)
    try:
        assert again.port == port
    finally:
        again.close()


def test_binding_a_busy_port_fails_loudly(status: AgentStatus) -> None:
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        with pytest.raises(OSError, match="in use"):
            start_api(f"{HOST}:{busy.getsockname()[1]}", status)


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        (":8080", ("", 8080)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("[::1]:9000", ("::1", 9000)),
    ],
)
def test_listen_addresses_are_parsed(addr: str, expected: tuple[str, int]) -> None:
    assert parse_listen_addr(addr) == expected


@pytest.mark.parametrize("addr", ["", "8080", "host:", "host:http", ":70000"])
def test_bad_listen_addresses_are_rejected(addr: str) -> None:
    with pytest.raises(ValueError, match="is not an address"):
        parse_listen_addr(addr)


def test_status_rejects_unknown_states() -> None:
    status = AgentStatus()
    with pytest.raises(ValueError, match="service web: unknown state"):
        status.upsert_service("web", state="exploded")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown phase"):
        status.set_phase("paused")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="service web: unknown health status"):
        status.record_health("web", "fine", failures=0)  # type: ignore[arg-type]


def test_upsert_changes_only_the_given_fields() -> None:
    status = AgentStatus()
    status.upsert_service("web", state="running", pid=7, guest_ip="172.16.0.2")
    status.upsert_service("web", state="failed", last_error="boom")
    (web,) = status.snapshot().services
    assert (web.state, web.pid, web.guest_ip, web.last_error) == (
        "failed",
        7,
        "172.16.0.2",
        "boom",
    )
    status.upsert_service("web", pid=None)
    assert status.snapshot().services[0].pid is None
    status.upsert_service("web", health_configured=True)
    status.record_health("web", "healthy", failures=0)
    status.upsert_service("web", health_configured=True)  # keeps the result
    assert status.snapshot().services[0].health.status == "healthy"
    status.upsert_service("web", health_configured=False)
    assert status.snapshot().services[0].health.status == "not_configured"


def test_metrics_name_each_services_state_health_and_restart_times(
    client: httpx.Client, status: AgentStatus
) -> None:
    due = datetime(2026, 12, 3, 12, 0, 5, tzinfo=UTC)
    checked = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)
    status.upsert_service("worker", state="crashloop", next_restart_at=due)
    status.record_health("worker", "unhealthy", failures=3, checked_at=checked)
    values = metrics(client)
    state = "firework_agent_service_state"
    assert values[state, (("service", "worker"), ("state", "crashloop"))] == 1
    assert (state, (("service", "worker"), ("state", "running"))) not in values
    health = "firework_agent_service_health"
    assert values[health, (("service", "worker"), ("status", "unhealthy"))] == 1
    worker = (("service", "worker"),)
    assert (
        values["firework_agent_service_next_restart_timestamp_seconds", worker]
        == due.timestamp()
    )
    assert (
        values["firework_agent_service_last_check_timestamp_seconds", worker]
        == checked.timestamp()
    )
