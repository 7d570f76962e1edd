"""The reporter, sending status to a control plane over real HTTP on 127.0.0.1."""

from __future__ import annotations

import itertools
import json
import logging
import random
import re
import secrets
import socketserver
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import nodeagent
from nodeagent.config import AgentConfig, parse_agent_config
from nodeagent.reporter import (
    MAX_DOCUMENT_BYTES,
    MAX_TEXT_BYTES,
    Backoff,
    Reporter,
    ReportOutcome,
    bounded_document,
)
from nodeagent.status import AgentStatus
from tests.fcdouble.testing import wait_for

HOST = "127.0.0.1"
NODE = "node-1"
ENROLLMENT_TOKEN = f"fwe_{secrets.token_hex(16)}"
NODE_TOKEN = f"fwn_{secrets.token_hex(16)}"
ROUTE = re.compile(r"/api/v1/nodes/([a-z0-9-]+)/(enroll|status)")
FAST = Backoff(initial=0.05, cap=0.2, jitter=0.0)


@dataclass(frozen=True)
class Recorded:
    """One request as the control plane saw it."""

    path: str
    authorization: str | None
    body: bytes
    at: float

    @property
    def endpoint(self) -> str:
        return self.path.rsplit("/", 1)[-1]


class ControlPlane(ThreadingHTTPServer):
    """A stand-in for the control plane's node endpoints defined in issue 7.

    It keeps the contract of that issue: ``enroll`` trades a one-time enrollment
    token for a node token, ``status`` takes a document with that token as a
    bearer, for its own node only, up to 256 KiB. It records every request and
    can be told to fail, hang or go away. An integration test against the real
    control plane comes with that issue.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int = 0, node_tokens: dict[str, str] | None = None):
        self.lock = threading.Lock()
        self.requests: list[Recorded] = []
        self.documents: list[dict[str, Any]] = []
        self.enrollment_tokens = {ENROLLMENT_TOKEN}
        self.node_tokens = node_tokens if node_tokens is not None else {}
        self.failures: deque[int] = deque()  # answered to the next requests
        self.fail_always: int | None = None
        self.echo_secrets = False  # a careless server quoting what it was sent
        self.hanging = threading.Event()
        self.released = threading.Event()
        super().__init__((HOST, port), Handler)
        self.thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def server_bind(self) -> None:
        # plain TCP bind: HTTPServer's reverse DNS lookup is slow without DNS
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = HOST, int(self.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_port}"

    def stop(self) -> None:
        """Go away: stop answering and close the port (idempotent)."""
        self.released.set()
        self.shutdown()
        self.server_close()

    def record(self, request: Recorded) -> int | None:
        """Keep ``request``; the failure to answer with, if told to fail."""
        with self.lock:
            self.requests.append(request)
            if self.failures:
                return self.failures.popleft()
            return self.fail_always

    def seen(self, endpoint: str) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if r.endpoint == endpoint]

    def received(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.documents)


class Handler(BaseHTTPRequestHandler):
    server: ControlPlane

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        auth = self.headers.get("Authorization")
        failure = self.server.record(Recorded(self.path, auth, body, time.monotonic()))
        if self.server.hanging.is_set():
            self.server.released.wait(30)
        if failure is not None:
            quoted = f": got {auth} {body.decode()}" if self.server.echo_secrets else ""
            self._reply(failure, {"detail": f"told to fail{quoted}"})
            return
        match = ROUTE.fullmatch(self.path)
        if match is None:
            self._reply(404, {"detail": "not found"})
        elif match.group(2) == "enroll":
            self._enroll(match.group(1), body)
        else:
            self._status(match.group(1), auth, body)

    def _enroll(self, node: str, body: bytes) -> None:
        offered = json.loads(body).get("enrollment_token")
        with self.server.lock:
            valid = offered in self.server.enrollment_tokens
            self.server.enrollment_tokens.discard(offered)
            token = f"fwn_{secrets.token_hex(16)}"
            if valid:
                self.server.node_tokens[token] = node
        if not valid:
            self._reply(403, {"detail": "enrollment token invalid, used or expired"})
            return
        self._reply(201, {"node": node, "token": token})

    def _status(self, node: str, auth: str | None, body: bytes) -> None:
        token = (auth or "").removeprefix("Bearer ")
        with self.server.lock:
            owner = self.server.node_tokens.get(token)
        if owner is None:
            self._reply(401, {"detail": "invalid token"})
        elif owner != node:
            self._reply(403, {"detail": "a node reports only for itself"})
        elif len(body) > MAX_DOCUMENT_BYTES:
            self._reply(413, {"detail": "too large"})
        else:
            document = json.loads(body)
            if not isinstance(document, dict) or "services" not in document:
                self._reply(400, {"detail": "not a status document"})
                return
            with self.server.lock:
                self.server.documents.append(document)
            self.send_response(204)
            self.end_headers()

    def _reply(self, code: int, document: dict[str, Any]) -> None:
        data = json.dumps(document).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def control_plane() -> Iterator[ControlPlane]:
    server = ControlPlane(node_tokens={NODE_TOKEN: NODE})
    yield server
    server.stop()


@pytest.fixture
def status() -> AgentStatus:
    status = AgentStatus(NODE, ["web"])
    status.set_phase("running")
    status.set_revisions({"web": '"etag-1"'})
    status.upsert_service("api", state="running", pid=42, guest_ip="172.16.0.2")
    return status


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    return tmp_path / "secrets" / "node-token"


@pytest.fixture
def enrollment_file(tmp_path: Path) -> Path:
    path = tmp_path / "enrollment-token"
    path.write_text(f"{ENROLLMENT_TOKEN}\n")
    return path


def agent_config(tmp_path: Path, url: str | None, **overrides: Any) -> AgentConfig:
    data = {
        "node_name": NODE,
        "store_type": "local",
        "store_dir": str(tmp_path / "store"),
        "state_dir": str(tmp_path / "state"),
        "control_plane_url": url,
        "control_plane_token_file": str(tmp_path / "secrets" / "node-token"),
        "heartbeat_interval": "1h",
        **overrides,
    }
    config, _ = parse_agent_config({k: v for k, v in data.items() if v is not None})
    return config


MakeReporter = Callable[..., Reporter]


@pytest.fixture
def make_reporter(
    tmp_path: Path, control_plane: ControlPlane, status: AgentStatus
) -> Iterator[MakeReporter]:
    made: list[Reporter] = []

    def make(backoff: Backoff = FAST, **overrides: Any) -> Reporter:
        config = agent_config(tmp_path, control_plane.url, **overrides)
        reporter = Reporter(config, status, backoff=backoff, rng=random.Random(7))
        made.append(reporter)
        reporter.start()
        return reporter

    yield make
    for reporter in made:
        reporter.stop()


def with_node_token(token_file: Path, token: str = NODE_TOKEN) -> None:
    token_file.parent.mkdir(mode=0o700, exist_ok=True)
    token_file.write_text(f"{token}\n")


def report_gaps(control_plane: ControlPlane) -> list[float]:
    """Seconds between the status requests the control plane received."""
    times = [r.at for r in control_plane.seen("status")]
    return [b - a for a, b in itertools.pairwise(times)]


def last(reporter: Reporter) -> ReportOutcome:
    outcome = reporter.last
    assert outcome is not None
    return outcome


def wait_ok(reporter: Reporter) -> None:
    # the server records a report just before it answers: wait for the answer
    wait_for(lambda: reporter.last is not None and reporter.last.ok, what="a 204")


def reporter_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "nodeagent.reporter"]


def test_it_enrolls_then_reports_with_the_node_token(
    make_reporter: MakeReporter,
    control_plane: ControlPlane,
    enrollment_file: Path,
    token_file: Path,
) -> None:
    reporter = make_reporter(control_plane_enrollment_token_file=str(enrollment_file))
    wait_for(lambda: control_plane.received(), what="a status report")

    enroll, report = control_plane.requests[:2]
    assert enroll.path == f"/api/v1/nodes/{NODE}/enroll"
    assert json.loads(enroll.body) == {"enrollment_token": ENROLLMENT_TOKEN}
    assert enroll.authorization is None
    issued = token_file.read_text().strip()
    assert issued.startswith("fwn_")
    assert report.path == f"/api/v1/nodes/{NODE}/status"
    assert report.authorization == f"Bearer {issued}"
    document = control_plane.received()[0]
    assert document["node"] == NODE
    assert document["agent_version"] == nodeagent.__version__
    assert set(document["host"]) == {"hostname", "kernel", "cpus", "memory_mb"}
    assert document["host"]["cpus"] >= 1
    assert document["host"]["memory_mb"] > 0
    assert [s["name"] for s in document["services"]] == ["api"]
    assert "truncated" not in document
    wait_ok(reporter)
    assert last(reporter).status_code == 204


def test_the_node_token_is_private_and_enrollment_happens_once(
    make_reporter: MakeReporter,
    control_plane: ControlPlane,
    enrollment_file: Path,
    token_file: Path,
) -> None:
    first = make_reporter(control_plane_enrollment_token_file=str(enrollment_file))
    wait_for(lambda: control_plane.received(), what="a status report")
    first.stop()

    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
    assert [p.name for p in token_file.parent.iterdir()] == [token_file.name]

    second = make_reporter(control_plane_enrollment_token_file=str(enrollment_file))
    wait_for(lambda: len(control_plane.received()) == 2, what="a second report")
    assert len(control_plane.seen("enroll")) == 1
    reports = control_plane.seen("status")
    assert reports[0].authorization == reports[1].authorization
    wait_ok(second)


def test_notify_returns_at_once_while_the_server_hangs(
    make_reporter: MakeReporter, control_plane: ControlPlane, token_file: Path
) -> None:
    with_node_token(token_file)
    control_plane.hanging.set()
    reporter = make_reporter()
    wait_for(lambda: control_plane.seen("status"), what="a hanging request")

    started = time.monotonic()
    for _ in range(100):
        reporter.notify()
    assert time.monotonic() - started < 0.05
    assert reporter.last is None


def test_it_reports_at_the_heartbeat_without_notify(
    make_reporter: MakeReporter, control_plane: ControlPlane, token_file: Path
) -> None:
    with_node_token(token_file)
    make_reporter(heartbeat_interval="200ms")

    wait_for(lambda: len(control_plane.received()) >= 4, what="four heartbeats")
    gaps = report_gaps(control_plane)
    assert all(0.18 < gap < 1.0 for gap in gaps), gaps


def test_notify_reports_soon_and_coalesces(
    make_reporter: MakeReporter, control_plane: ControlPlane, token_file: Path
) -> None:
    with_node_token(token_file)
    reporter = make_reporter()  # heartbeat 1h: only notify() causes reports
    wait_for(lambda: len(control_plane.received()) == 1, what="the first report")

    for _ in range(50):
        reporter.notify()
    wait_for(lambda: len(control_plane.received()) >= 2, timeout=1, what="a report")
    time.sleep(0.3)
    assert 2 <= len(control_plane.received()) <= 3


def test_backoff_doubles_on_server_errors_and_resets_after_success(
    make_reporter: MakeReporter, control_plane: ControlPlane, token_file: Path
) -> None:
    with_node_token(token_file)
    control_plane.failures.extend([500] * 4)
    reporter = make_reporter(backoff=Backoff(initial=0.05, cap=10, jitter=0))
    wait_for(lambda: control_plane.received(), what="a report after four 500s")

    gaps = report_gaps(control_plane)
    assert len(gaps) == 4
    for gap, expected in zip(gaps, [0.05, 0.1, 0.2, 0.4], strict=True):
        assert expected * 0.9 < gap < expected + 0.15, gaps
    wait_ok(reporter)

    control_plane.failures.append(503)
    reporter.notify()
    wait_for(lambda: not last(reporter).ok, what="the next failure")
    assert last(reporter).status_code == 503
    assert last(reporter).retry_in == 0.05
    assert (
        last(reporter).error
        == "status report: HTTP 503 control plane error: told to fail"
    )


def test_notify_during_backoff_waits_for_the_backoff(
    make_reporter: MakeReporter, control_plane: ControlPlane, token_file: Path
) -> None:
    with_node_token(token_file)
    control_plane.fail_always = 500
    reporter = make_reporter(backoff=Backoff(initial=0.5, cap=0.5, jitter=0))
    wait_for(lambda: reporter.last is not None, what="the first failure")

    for _ in range(20):
        reporter.notify()
        time.sleep(0.01)
    assert len(control_plane.seen("status")) == 1
    wait_for(lambda: len(control_plane.seen("status")) == 2, what="the retry")


@pytest.mark.parametrize(
    ("failures", "seconds"),
    [(1, 1), (2, 2), (3, 4), (6, 32), (7, 60), (10_000, 60)],
)
def test_backoff_doubles_from_one_second_to_a_minute(
    failures: int, seconds: float
) -> None:
    rng = random.Random(failures)
    delays = [Backoff().delay(failures, rng) for _ in range(200)]
    assert all(seconds * 0.8 <= d <= seconds * 1.2 for d in delays)
    assert max(delays) - min(delays) > seconds * 0.2  # jittered, not fixed
    assert Backoff(jitter=0).delay(failures, rng) == seconds


def test_reports_resume_when_the_control_plane_comes_back(
    make_reporter: MakeReporter,
    control_plane: ControlPlane,
    token_file: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="nodeagent.reporter")
    with_node_token(token_file)
    reporter = make_reporter(heartbeat_interval="200ms")
    wait_for(lambda: control_plane.received(), what="the first report")

    control_plane.stop()
    wait_for(
        lambda: reporter.last is not None and last(reporter).retry_in == FAST.cap,
        what="several failed reports",
    )
    assert last(reporter).status_code is None
    assert last(reporter).error.startswith("status report: ")

    back = ControlPlane(
        control_plane.server_port, node_tokens=control_plane.node_tokens
    )
    try:
        wait_for(lambda: back.received(), what="a report to the new server")
        wait_ok(reporter)
    finally:
        back.stop()
    levels = [r.levelno for r in reporter_records(caplog)]
    assert levels.count(logging.WARNING) == 1
    assert logging.ERROR not in levels
    assert levels.count(logging.DEBUG) >= 2
    messages = [r.getMessage() for r in reporter_records(caplog)]
    assert any(m.startswith("control plane reachable again") for m in messages)


def test_a_rejected_token_is_read_again_from_the_file(
    make_reporter: MakeReporter,
    control_plane: ControlPlane,
    token_file: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="nodeagent.reporter")
    revoked = f"fwn_{secrets.token_hex(16)}"
    with_node_token(token_file, revoked)
    reporter = make_reporter()
    wait_for(lambda: len(control_plane.seen("status")) >= 3, what="three 401s")
    assert last(reporter).status_code == 401
    assert last(reporter).retry_in == FAST.cap
    errors = [r for r in reporter_records(caplog) if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "HTTP 401 token rejected" in errors[0].getMessage()

    with_node_token(token_file)  # the operator put a good token in place
    wait_for(lambda: control_plane.received(), what="a report with the new token")
    assert control_plane.seen("status")[-1].authorization == f"Bearer {NODE_TOKEN}"
    wait_ok(reporter)
    assert revoked not in caplog.text
    assert not control_plane.seen("enroll")


def test_a_refused_enrollment_is_retried_at_the_capped_pace(
    make_reporter: MakeReporter,
    control_plane: ControlPlane,
    enrollment_file: Path,
    token_file: Path,
) -> None:
    control_plane.enrollment_tokens.clear()  # already used or expired
    reporter = make_reporter(control_plane_enrollment_token_file=str(enrollment_file))
    wait_for(lambda: len(control_plane.seen("enroll")) >= 2, what="two enrollments")

    assert last(reporter).status_code == 403
    assert last(reporter).retry_in == FAST.cap
    assert last(reporter).error == (
        "enrollment: HTTP 403 refused: enrollment token invalid, used or expired"
    )
    assert not token_file.exists()
    assert not control_plane.seen("status")


def test_a_node_token_that_cannot_be_saved_still_serves(
    make_reporter: MakeReporter,
    control_plane: ControlPlane,
    enrollment_file: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # reads as missing, but its directory cannot be created, even by root
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    reporter = make_reporter(
        control_plane_enrollment_token_file=str(enrollment_file),
        control_plane_token_file=str(tmp_path / "dangling" / "token"),
    )
    wait_ok(reporter)
    errors = [r for r in reporter_records(caplog) if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        f"node token not saved path={tmp_path}/dangling/token: File exists"
    ]
    assert control_plane.seen("status")[0].authorization == (
        f"Bearer {next(iter(control_plane.node_tokens.keys() - {NODE_TOKEN}))}"
    )


def test_without_any_token_it_says_which_file_is_missing(
    make_reporter: MakeReporter, control_plane: ControlPlane, token_file: Path
) -> None:
    reporter = make_reporter()
    wait_for(lambda: reporter.last is not None, what="an attempt")
    assert last(reporter).error == (
        f"control_plane_token_file: {token_file} is missing or empty and "
        "control_plane_enrollment_token_file is not set"
    )
    assert not control_plane.requests


def test_no_token_reaches_a_log_line_or_an_error(
    make_reporter: MakeReporter,
    control_plane: ControlPlane,
    enrollment_file: Path,
    token_file: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    control_plane.echo_secrets = True
    control_plane.failures.extend([403, 500])  # the enrollment, then a report
    reporter = make_reporter(control_plane_enrollment_token_file=str(enrollment_file))
    wait_for(lambda: control_plane.received(), what="a report after two failures")
    outcomes = {last(reporter)}
    control_plane.fail_always = 401
    reporter.notify()
    wait_for(lambda: last(reporter).status_code == 401, what="a 401")
    outcomes.add(last(reporter))

    issued = token_file.read_text().strip()
    quoted = [
        r.getMessage() for r in caplog.records if "told to fail" in r.getMessage()
    ]
    assert len(quoted) >= 3
    assert all("[redacted]" in message for message in quoted)
    for secret in (ENROLLMENT_TOKEN, issued):
        assert secret not in caplog.text
        assert all(secret not in o.error for o in outcomes)


def test_an_oversized_document_is_cut_under_the_cap(
    make_reporter: MakeReporter,
    control_plane: ControlPlane,
    status: AgentStatus,
    token_file: Path,
) -> None:
    with_node_token(token_file)
    status.set_stale("x" * 5000)
    for i in range(2000):
        name = f"svc-{i:04d}"
        status.upsert_service(name, state="failed", last_error="e" * 5000)
        status.record_health(name, "unhealthy", failures=3, last_error="h" * 5000)
    make_reporter()
    wait_for(lambda: control_plane.received(), what="a report")

    assert len(control_plane.seen("status")[0].body) <= MAX_DOCUMENT_BYTES
    document = control_plane.received()[0]
    assert document["truncated"] is True
    names = [s["name"] for s in document["services"]]
    assert 50 < len(names) < 2000
    assert names == ["api", *(f"svc-{i:04d}" for i in range(len(names) - 1))]
    assert len(document["stale_reason"]) == MAX_TEXT_BYTES
    for service in document["services"][1:]:
        assert len(service["last_error"]) == MAX_TEXT_BYTES
        assert len(service["health"]["last_error"]) == MAX_TEXT_BYTES


def test_clipping_keeps_whole_characters_and_small_documents_as_they_are() -> None:
    service = {"name": "web", "last_error": "é" * 1000, "health": {"last_error": ""}}
    document = {"node": NODE, "stale_reason": "", "services": [service]}
    bounded = bounded_document(document)
    assert bounded["services"][0]["last_error"] == "é" * (MAX_TEXT_BYTES // 2)
    assert "truncated" not in bounded
    small = {**document, "services": [{**service, "last_error": "boom"}]}
    assert bounded_document(small) == small


def test_stop_joins_at_once_during_a_backoff(
    make_reporter: MakeReporter, control_plane: ControlPlane, token_file: Path
) -> None:
    with_node_token(token_file)
    control_plane.fail_always = 403
    reporter = make_reporter(backoff=Backoff())  # the real pace: about a minute
    wait_for(lambda: reporter.last is not None, what="a refused report")
    assert (last(reporter).retry_in or 0) > 45

    started = time.monotonic()
    reporter.stop()
    # stop() gives up waiting after 1 s, so returning well before means joined
    assert time.monotonic() - started < 0.5
    assert len(control_plane.requests) == 1


def test_from_config_needs_a_control_plane_url(
    tmp_path: Path, status: AgentStatus
) -> None:
    assert Reporter.from_config(agent_config(tmp_path, None), status) is None
    reporter = Reporter.from_config(agent_config(tmp_path, "https://cp.test"), status)
    assert reporter is not None
    assert reporter.base_url == f"https://cp.test/api/v1/nodes/{NODE}"
    reporter.stop()
