"""The reporter, sending status to a control plane over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import random
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import nodeagent
from nodeagent.reporter import (
    MAX_DOCUMENT_BYTES,
    MAX_TEXT_BYTES,
    Backoff,
    Reporter,
    bounded_document,
)
from nodeagent.status import AgentStatus
from tests.cpstandin import (
    ENROLLMENT_TOKEN,
    FAST,
    NODE,
    NODE_TOKEN,
    ControlPlane,
    agent_config,
    last,
    report_gaps,
    wait_ok,
    with_node_token,
)
from tests.fcdouble.testing import wait_for


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
