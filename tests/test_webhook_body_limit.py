"""The webhook's body cap, and what needs the webhook on a real server.

The cap's edges are checked in process with the test client. The rest runs on
gunicorn, as in production: a 100 MB body, chunked bodies, concurrent
redeliveries and a broker that is down.

The server runs in its own process on 127.0.0.1 with its own SQLite database,
so its memory can be read from ``/proc``: a body over the cap must be refused
without the worker's peak resident memory growing anywhere near the body's
size. Requests are written on a raw socket, so the test controls how much of
the body is sent and sees when the answer comes.

(Django's ``runserver``, and pytest-django's ``live_server``, read any unread
body to its end after the response, so they cannot show this.)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.test import Client
from pytest_django import Settings

from controlplane.models import ConfigRepository
from tests.conftest import free_ports
from tests.test_webhook import (
    CLONE_URL,
    SECRET,
    assert_error,
    last_delivery,
    post,
    push_payload,
)

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
LIMIT = 1024 * 1024
MIB = 1024 * 1024
THREADS = 8
SETUP = """
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from controlplane.models import ConfigRepository
ConfigRepository.objects.create(
    name="ops",
    clone_url="http://127.0.0.1:9/acme/ops.git",  # never fetched
    github_full_name="acme/ops",
    webhook_secret_env="FIREWORK_TEST_OPS_SECRET",
)
"""


@dataclass(frozen=True)
class Server:
    """A gunicorn master with one sync worker, serving Firework."""

    port: int
    master: subprocess.Popen[bytes]
    database: Path
    log: Path

    def worker_pid(self) -> int:
        children = Path(f"/proc/{self.master.pid}/task/{self.master.pid}/children")
        pids = children.read_text().split()
        assert len(pids) == 1, f"expected one worker, found {pids}"
        return int(pids[0])

    def peak_rss(self) -> int:
        """The worker's peak resident memory (VmHWM) in bytes."""
        status = Path(f"/proc/{self.worker_pid()}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024

    def last_row(self, table: str) -> sqlite3.Row:
        """The newest row of ``table`` in the server's database."""
        with sqlite3.connect(self.database) as db:
            db.row_factory = sqlite3.Row
            row: sqlite3.Row = db.execute(
                f"SELECT * FROM {table} ORDER BY id DESC LIMIT 1"
            ).fetchone()
        return row

    def last_delivery(self) -> sqlite3.Row:
        return self.last_row("controlplane_webhookdelivery")


def _env(tmp: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp),
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "firework_site.settings",
        "FIREWORK_VAR_DIR": str(tmp),
        "DATABASE_URL": f"sqlite:///{tmp / 'server.sqlite3'}",
        "FIREWORK_WEBHOOK_MAX_BYTES": str(LIMIT),
        "FIREWORK_TEST_OPS_SECRET": SECRET,
        "FIREWORK_LOG_LEVEL": "WARNING",
        # Not eager: a run is only handed to the worker's in-memory broker.
        "CELERY_BROKER_URL": "memory://localhost/",
    }


def _wait_ready(server: Server) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.master.poll() is not None:
            pytest.fail(f"gunicorn exited:\n{server.log.read_text()[-2000:]}")
        try:
            status, _ = exchange(server.port, b"GET /webhooks/github/", [])
        except OSError:
            time.sleep(0.05)
            continue
        assert status == 405
        return
    pytest.fail(f"gunicorn not ready:\n{server.log.read_text()[-2000:]}")


@contextmanager
def serve(tmp: Path, **env_changes: str) -> Iterator[Server]:
    """gunicorn on a free port with a migrated database of its own."""
    env = _env(tmp) | env_changes
    subprocess.run(
        [sys.executable, "-c", SETUP], env=env, cwd=ROOT, check=True, timeout=60
    )
    port = free_ports(1)[0]
    log = tmp / "gunicorn.log"
    with log.open("wb") as out:
        master = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                f"--bind={HOST}:{port}",
                "--workers=1",
                # threads, so that concurrent requests really overlap
                "--worker-class=gthread",
                f"--threads={THREADS}",
                "--timeout=30",
                "firework_site.wsgi:application",
            ],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    running = Server(port, master, tmp / "server.sqlite3", log)
    try:
        _wait_ready(running)
        yield running
    finally:
        os.killpg(master.pid, signal.SIGTERM)
        try:
            master.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(master.pid, signal.SIGKILL)
            master.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve(tmp_path_factory.mktemp("gunicorn")) as running:
        yield running


def exchange(
    port: int, head: bytes, body: Iterable[bytes], headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """Send a request, then its body until the answer starts; the answer."""
    status, answer, _ = _exchange(port, head, body, headers or {})
    return status, answer


def _exchange(
    port: int, head: bytes, body: Iterable[bytes], headers: dict[str, str]
) -> tuple[int, bytes, int]:
    lines = [head + b" HTTP/1.1", f"Host: {HOST}:{port}".encode()]
    lines.append(b"Connection: close")  # the answer ends when the server closes
    lines += [f"{k}: {v}".encode() for k, v in headers.items()]
    sent = 0
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n")
        for chunk in body:
            if select.select([sock], [], [], 0)[0]:
                break  # the server answered: it will not read the rest
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        raw = _read_all(sock)
    header, _, answer = raw.partition(b"\r\n\r\n")
    return int(header.split()[1]), answer, sent


def _read_all(sock: socket.socket) -> bytes:
    parts = []
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break  # the answer came before the reset; unread body makes one
        if not data:
            break
        parts.append(data)
    return b"".join(parts)


def _zeros(size: int, chunk: int = 64 * 1024) -> Iterator[bytes]:
    block = bytes(chunk)
    for _ in range(size // chunk):
        yield block


def _chunked(chunks: Iterable[bytes]) -> Iterator[bytes]:
    for chunk in chunks:
        yield b"%x\r\n%s\r\n" % (len(chunk), chunk)
    yield b"0\r\n\r\n"


def _signature(chunks: Iterable[bytes]) -> str:
    mac = hmac.new(SECRET.encode(), digestmod=hashlib.sha256)
    for chunk in chunks:
        mac.update(chunk)
    return "sha256=" + mac.hexdigest()


def _headers(event: str, signature: str, **more: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": signature,
        **more,
    }


def _push_body() -> bytes:
    payload = {
        "ref": "refs/heads/main",
        "after": "3f786850e387550fdab836ed7e6dc881de23001b",
        "repository": {"full_name": "acme/ops"},
    }
    return json.dumps(payload).encode()


def _ping(server: Server) -> None:
    body = b'{"zen": "Design for failure."}'
    headers = _headers("ping", _signature([body]), **{"Content-Length": "30"})
    status, answer = exchange(server.port, b"POST /webhooks/github/", [body], headers)
    assert (status, json.loads(answer)) == (200, {"status": "pong"})


# In process, with the test client


@pytest.fixture
def ops(db: None, monkeypatch: pytest.MonkeyPatch) -> ConfigRepository:
    monkeypatch.setenv("FIREWORK_TEST_OPS_SECRET", SECRET)
    return ConfigRepository.objects.create(
        name="ops",
        clone_url=CLONE_URL,
        github_full_name="acme/ops",
        webhook_secret_env="FIREWORK_TEST_OPS_SECRET",
    )


def test_declared_body_over_the_limit_is_refused_without_reading_it(
    ops: ConfigRepository, settings: Settings
) -> None:
    settings.FIREWORK_WEBHOOK_MAX_BYTES = 1024
    # The test client's stream fails the test on any read past its few bytes,
    # so a 413 here shows the view never touched the body.
    response = post(Client(), b"{}", CONTENT_LENGTH=str(100 * 1024 * 1024))
    assert_error(response, 413, "over the limit of 1024")
    assert last_delivery().body_bytes == 0


def test_body_of_exactly_the_limit_is_accepted_and_one_more_byte_is_not(
    ops: ConfigRepository, settings: Settings
) -> None:
    body = json.dumps(push_payload()).encode()
    settings.FIREWORK_WEBHOOK_MAX_BYTES = len(body) - 1
    assert_error(post(Client(), body), 413, "over the limit")
    settings.FIREWORK_WEBHOOK_MAX_BYTES = len(body)
    assert post(Client(), body).status_code == 202


@pytest.mark.parametrize("length", ["abc", "-1", "1e3"])
def test_invalid_content_length_is_refused(ops: ConfigRepository, length: str) -> None:
    response = post(Client(), b"{}", CONTENT_LENGTH=length)
    assert_error(response, 400, "invalid Content-Length")


def test_chunked_body_on_a_server_that_cannot_end_it_is_refused(
    ops: ConfigRepository,
) -> None:
    # Without wsgi.input_terminated the body's end is unknown: never wait on it.
    response = post(
        Client(), b"{}", CONTENT_LENGTH="", HTTP_TRANSFER_ENCODING="chunked"
    )
    assert_error(response, 411, "Content-Length")


# On gunicorn


def test_100_mb_body_is_refused_before_it_is_read(server: Server) -> None:
    _ping(server)  # the request path is loaded before memory is measured
    before = server.peak_rss()
    size = 100 * MIB
    headers = _headers(
        "push", _signature(_zeros(size)), **{"Content-Length": str(size)}
    )
    status, answer, sent = _exchange(
        server.port, b"POST /webhooks/github/", _zeros(size), headers
    )
    assert status == 413
    assert json.loads(answer) == {
        "error": f"body of {size} bytes is over the limit of {LIMIT}"
    }
    assert sent < size // 4, f"the client sent {sent} bytes before the answer"
    assert server.peak_rss() - before < 8 * MIB
    delivery = server.last_delivery()
    assert (delivery["status_code"], delivery["body_bytes"]) == (413, 0)
    _ping(server)  # and the worker goes on serving


def test_chunked_body_over_the_limit_is_cut_off(server: Server) -> None:
    _ping(server)
    before = server.peak_rss()
    size = 100 * MIB
    headers = _headers(
        "push", _signature(_zeros(size)), **{"Transfer-Encoding": "chunked"}
    )
    status, answer, sent = _exchange(
        server.port, b"POST /webhooks/github/", _chunked(_zeros(size)), headers
    )
    assert status == 413
    assert json.loads(answer) == {"error": f"body is over the limit of {LIMIT} bytes"}
    assert sent < size // 4, f"the client sent {sent} bytes before the answer"
    assert server.peak_rss() - before < 8 * MIB
    delivery = server.last_delivery()
    assert delivery["status_code"] == 413
    assert LIMIT < delivery["body_bytes"] <= LIMIT + 64 * 1024


def test_chunked_body_under_the_limit_is_read_whole_and_verified(
    server: Server,
) -> None:
    body = json.dumps({"zen": "x" * (LIMIT - 100)}).encode()
    pieces = [body[i : i + 10_000] for i in range(0, len(body), 10_000)]
    headers = _headers("ping", _signature(pieces), **{"Transfer-Encoding": "chunked"})
    status, answer = exchange(
        server.port, b"POST /webhooks/github/", _chunked(pieces), headers
    )
    assert (status, json.loads(answer)) == (200, {"status": "pong"})
    assert server.last_delivery()["body_bytes"] == len(body)


def test_concurrent_redeliveries_queue_one_run(server: Server) -> None:
    body = _push_body()
    delivery = str(uuid.uuid4())
    headers = _headers("push", _signature([body]), **{"Content-Length": str(len(body))})
    headers["X-GitHub-Delivery"] = delivery
    count = THREADS
    start = threading.Barrier(count)
    answers: list[dict[str, object]] = []

    def send() -> None:
        start.wait()
        status, answer = exchange(
            server.port, b"POST /webhooks/github/", [body], headers
        )
        answers.append({"code": status, **json.loads(answer)})

    threads = [threading.Thread(target=send) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    revision = server.last_row("controlplane_revision")
    with sqlite3.connect(server.database) as db:
        (runs,) = db.execute(
            "SELECT count(*) FROM controlplane_revision WHERE delivery_id = ?",
            (delivery,),
        ).fetchone()
    assert runs == 1
    queued = [a for a in answers if a["status"] == "queued"]
    duplicates = [a for a in answers if a["status"] == "duplicate"]
    assert len(queued) == 1, answers
    assert duplicates == [
        {"code": 200, "status": "duplicate", "revision": revision["id"]}
    ] * (count - 1)
    assert revision["delivery_id"] == delivery


def test_push_while_the_broker_is_down_answers_503_and_stays_redeliverable(
    tmp_path: Path,
) -> None:
    closed = free_ports(1)[0]  # nothing listens there once the socket is closed
    body = _push_body()
    headers = _headers("push", _signature([body]), **{"Content-Length": str(len(body))})
    with serve(tmp_path, CELERY_BROKER_URL=f"redis://{HOST}:{closed}/0") as down:
        status, answer = exchange(down.port, b"POST /webhooks/github/", [body], headers)
        delivery = down.last_delivery()
        revision = down.last_row("controlplane_revision")
        # GitHub's redelivery (same id) is tried again, not taken for a duplicate
        again, _ = exchange(down.port, b"POST /webhooks/github/", [body], headers)
        retried = down.last_row("controlplane_revision")
    assert status == 503
    assert json.loads(answer) == {
        "error": "the run could not be queued; redeliver later"
    }
    assert (delivery["status_code"], delivery["accepted"]) == (503, 0)
    assert delivery["revision_id"] == revision["id"]
    assert "OperationalError" in delivery["outcome"]
    assert (revision["status"], revision["started_at"]) == ("failed", None)
    assert again == 503
    assert retried["id"] > revision["id"]
