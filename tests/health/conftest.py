"""Health probes and the HealthMonitor against real servers on guest addresses.

Each test builds a private network: a "node" namespace with the bridge ``br0``
(172.29.0.1/24) and two "guest" namespaces on veths attached to it (172.29.0.2
and .3). A small HTTP server in each guest answers as its control file says:
200, 503, 302, slower than the probe timeout, or not at all (port closed).

setns(2) moves only the calling thread, so a helper thread enters the node
namespace and calls ``probe()`` or ``HealthMonitor.start()`` there; the
monitor's scheduler and pool threads inherit that namespace, while the test's
own thread never leaves the host's. Callbacks and status writes are recorded
in-process; the servers log the monotonic time of each request.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pyroute2.netns import setns

from nodeagent.health import HealthMonitor, Target, probe
from nodeagent.status import AgentStatus, HealthState
from tests.conftest import stop_process_group
from tests.netns import Namespaces, exec_in, popen_in

T = TypeVar("T")
PORT = 8080
GUEST_IPS = ("172.29.0.2", "172.29.0.3")

SERVER = r'''
"""A guest's service: answers as the control file says; logs each request."""
import os, socketserver, sys, threading, time
from http.server import BaseHTTPRequestHandler

host, port, control, hits, state = sys.argv[1], int(sys.argv[2]), *sys.argv[3:6]
CODES = {"ok": 200, "fail": 503, "redirect": 302, "slow": 200}


def mode():
    with open(control) as f:
        return f.read().strip()


def publish(value):  # atomically, so the test never reads half of it
    with open(state + ".tmp", "w") as f:
        f.write(value)
    os.replace(state + ".tmp", state)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        with open(hits, "a") as f:
            f.write(f"{time.monotonic()} {self.path}\n")
        if mode() == "slow":
            time.sleep(3)
        self.send_response(CODES[mode()] if self.path == "/health" else 404)
        self.send_header("Location", "/elsewhere")  # counts with 302 only
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingTCPServer):
    # not http.server.HTTPServer: its bind does a reverse DNS lookup
    allow_reuse_address = daemon_threads = True


while True:
    while mode() == "down":
        publish("down")
        time.sleep(0.01)
    server = Server((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    publish("up")
    while mode() != "down":
        time.sleep(0.01)
    server.shutdown()
    server.server_close()
'''


def in_netns(ns: str, call: Callable[[], T]) -> T:
    """``call()`` on a fresh thread that entered network namespace ``ns`` first."""

    def run() -> T:
        setns(ns, flags=0)
        return call()

    # the pool's one thread is started for this call and ends with the pool
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()


def probe_in(ns: str, checked: Target) -> str | None:
    return in_netns(ns, lambda: probe(checked))


class Guest:
    """The test server in one guest namespace."""

    def __init__(self, ns: str, ip: str, workdir: Path, script: Path) -> None:
        self.ns, self.ip = ns, ip
        self.control = workdir / "control"
        self.hits_file = workdir / "hits"
        self.state = workdir / "state"
        self._write("ok")
        self.hits_file.touch()
        self.proc = popen_in(
            ns,
            [sys.executable, str(script), ip, str(PORT)]
            + [str(p) for p in (self.control, self.hits_file, self.state)],
            log=workdir / "server.log",
        )
        self._wait_state("up")

    def set(self, mode: str) -> None:
        """Answer as ``mode`` from now on: ok, fail, redirect, slow or down."""
        self._write(mode)
        self._wait_state("down" if mode == "down" else "up")

    def hits(self, path: str = "/health") -> list[float]:
        """When each request for ``path`` arrived (monotonic seconds)."""
        lines = self.hits_file.read_text().splitlines()
        return [float(t) for t, p in (line.split() for line in lines) if p == path]

    def _write(self, mode: str) -> None:
        tmp = self.control.with_suffix(".tmp")
        tmp.write_text(mode)
        os.replace(tmp, self.control)

    def _wait_state(self, want: str) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.state.exists() and self.state.read_text() == want:
                return
            assert self.proc.poll() is None, "guest server died"
            time.sleep(0.01)
        raise AssertionError(f"guest server not {want} in time")


@dataclass
class Net:
    node: str
    guests: list[Guest]


@pytest.fixture
def net(namespaces: Namespaces, tmp_path: Path) -> Iterator[Net]:
    node = namespaces.new("node")
    exec_in(node, ["ip", "link", "add", "br0", "type", "bridge"])
    exec_in(node, ["ip", "addr", "add", "172.29.0.1/24", "dev", "br0"])
    exec_in(node, ["ip", "link", "set", "br0", "up"])
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    guests = []
    for i, ip in enumerate(GUEST_IPS, start=1):
        ns = namespaces.new(f"guest{i}")
        namespaces.veth(ns, "eth0", node, f"vg{i}", a_addr=f"{ip}/24")
        exec_in(node, ["ip", "link", "set", f"vg{i}", "master", "br0"])
        workdir = tmp_path / f"guest{i}"
        workdir.mkdir()
        guests.append(Guest(ns, ip, workdir, script))
    try:
        yield Net(node, guests)
    finally:
        for guest in guests:
            stop_process_group(guest.proc)


def target(guest: Guest, service: str = "web", type: Any = "http", **kw: Any) -> Target:
    """A check of ``guest`` on a fast schedule; ``kw`` overrides any field."""
    path = "/health" if type == "http" else None
    return replace(Target(service, type, guest.ip, PORT, path, 0.05, 0.3, 2), **kw)


# -- the monitor --------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    kind: str  # a health state, or "on_unhealthy" / "on_healthy"
    service: str
    failures: int
    error: str
    at: float


class Recorder(AgentStatus):
    """An AgentStatus that also records every health write and callback."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[Event] = []
        self._cond = threading.Condition()

    def record_health(self, name: str, status: HealthState, **kw: Any) -> None:
        super().record_health(name, status, **kw)
        error = kw.get("last_error", "")
        self._add(Event(status, name, kw["failures"], error, time.monotonic()))

    def on_unhealthy(self, service: str, reason: str) -> None:
        self._add(Event("on_unhealthy", service, 0, reason, time.monotonic()))

    def on_healthy(self, service: str) -> None:
        self._add(Event("on_healthy", service, 0, "", time.monotonic()))

    def _add(self, event: Event) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def of(self, kind: str, service: str = "web") -> list[Event]:
        with self._cond:
            return [e for e in self.events if (e.kind, e.service) == (kind, service)]

    def wait_for(
        self, kind: str, count: int = 1, service: str = "web", timeout: float = 3.0
    ) -> list[Event]:
        with self._cond:
            self._cond.wait_for(
                lambda: len(self.of(kind, service)) >= count, timeout=timeout
            )
        got = self.of(kind, service)
        assert len(got) >= count, f"{count} x {kind} of {service}: {self.events}"
        return got


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def start_monitor(net: Net, recorder: Recorder) -> Iterator[Callable[..., Any]]:
    """Starts a HealthMonitor in the node namespace; stops it after the test."""
    monitors: list[HealthMonitor] = []

    def start(grace: float = 0.0) -> HealthMonitor:
        monitor = HealthMonitor(
            recorder, recorder.on_unhealthy, grace=grace, on_healthy=recorder.on_healthy
        )
        in_netns(net.node, monitor.start)
        monitors.append(monitor)
        return monitor

    yield start
    for monitor in monitors:
        monitor.stop()
