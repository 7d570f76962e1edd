"""A stand-in for the control plane's node endpoints, for the reporter's tests.

It serves ``POST /api/v1/nodes/<name>/enroll`` and ``.../status`` on 127.0.0.1
as issue 7 defines them (201 with a node token, 204 for a report; 401, 403, 413
and server errors on demand), records every request, and can hang or stop. The
agent is also tested against the real control plane in
``tests/test_agent_reports.py``; this stand-in lets the tests here break the
server in ways the real one never would on its own.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import socketserver
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from nodeagent.config import AgentConfig, parse_agent_config
from nodeagent.reporter import MAX_DOCUMENT_BYTES, Backoff, Reporter, ReportOutcome
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
