"""The agent keeps services up: crashed VMMs and failing health checks restart,
with backoff, crash loops reported, recovery resetting it all.

Crash tests run the agent as a plain process (local store, Firecracker doubles).
Health tests run it inside a "node" namespace with real networking: the guest
namespace on its bridge serves HTTP that the test turns healthy or failing.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.agentsupport import AgentProcess, Node
from tests.conftest import stop_process_group
from tests.fcdouble.testing import wait_for
from tests.netns import Namespaces
from tests.nsagent import NsAgent, plug_guest, serve_guest


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path)
    yield n
    n.cleanup()


LOG_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ \S+ "
    r"restart service=\S+ reason=(.*) next_delay=([\d.]+)s$",
    re.MULTILINE,
)


def restart_times(log: str) -> list[tuple[float, str, float]]:
    """(Unix time, reason, next delay) of each restart in an agent log."""
    return [
        (
            datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp(),
            m[2],
            float(m[3]),
        )
        for m in LOG_LINE.finditer(log)
    ]


def running_pid(agent: AgentProcess, name: str, old: int) -> int | None:
    service = agent.services().get(name, {})
    if service.get("state") in ("running", "crashloop") and service["pid"] not in (
        0,
        old,
    ):
        return int(service["pid"])
    return None


def test_a_killed_vmm_is_restarted_at_once_then_with_backoff(node: Node) -> None:
    web = node.name("web")
    node.publish([node.service("web")])
    # A long poll: only the exit watcher can explain a quick restart.
    node.write_config(
        poll_interval="1m",
        restart_backoff_initial="1500ms",
        restart_backoff_max="3s",
        crashloop_restarts=3,
    )
    agent = node.start_agent()
    pid = agent.wait_running([web])[web]

    kills = []
    for _ in range(3):
        kills.append(time.time())
        os.kill(pid, signal.SIGKILL)
        wait_for(
            lambda p=pid: running_pid(agent, web, p) is not None,
            timeout=15,
            what=f"restart\n{agent.tail()}",
        )
        pid = running_pid(agent, web, pid) or 0

    restarts = restart_times(agent.log.read_text())
    assert [reason for _, reason, _ in restarts] == ["not running"] * 3
    times = [at for at, _, _ in restarts]
    delays = [delay for _, _, delay in restarts]
    # The agent decides at once (the exit watcher wakes it, the poll is 1 min);
    # the VMM's own start-up comes on top of that.
    assert times[0] - kills[0] < 0.5, (kills, restarts)
    # Then backoff between restarts: 1.5 s, then 3 s (the cap), each +-20%
    # and never above the cap.
    assert 1.5 * 0.8 <= delays[0] <= 1.5 * 1.2
    assert 3.0 * 0.8 <= delays[1] <= 3.0
    assert times[1] - times[0] >= delays[0] - 0.05, restarts
    assert times[2] - times[1] >= delays[1] - 0.05, restarts
    service = agent.services()[web]
    assert service["restarts"] == 3
    assert service["state"] == "crashloop"
    assert "not running" in service["last_error"]


RESTART = re.compile(r"restart service=(\S+) reason=(.*) next_delay=([\d.]+)s")


def restarts_logged(agent: NsAgent) -> list[tuple[str, float]]:
    """(reason, next delay) of every restart the agent logged."""
    return [(m[2], float(m[3])) for m in RESTART.finditer(agent.log_text())]


def test_failing_checks_restart_with_backoff_to_a_crash_loop_and_recover(
    net: tuple[Node, NsAgent, dict[str, str]], namespaces: Namespaces
) -> None:
    node, agent, ns = net
    web = node.name("web")
    check = {
        "type": "http",
        "port": 80,
        "path": "/health",
        "interval": "100ms",
        "timeout": "300ms",
        "retries": 2,
    }
    node.publish([node.service("web", health_check=check)])
    control = node.root / "control"
    control.write_text("ok")
    agent.start(
        health_grace="300ms",
        restart_backoff_initial="300ms",
        restart_backoff_max="1200ms",
        crashloop_restarts=4,
        crashloop_window="1m",
    )
    plug_guest(namespaces, ns, "172.30.0.2")
    server = serve_guest(ns["guest"], "web", control)
    try:

        def health() -> dict[str, object]:
            checks = (agent.get("/health") or {}).get("checks", {})
            return dict(checks.get(web, {}))

        wait_for(lambda: health().get("status") == "healthy", timeout=15, what="ok")

        control.write_text("fail")
        wait_for(
            lambda: len(restarts_logged(agent)) >= 5,
            timeout=30,
            what=f"five restarts\n{agent.get('/health')}\n{agent.log()}",
        )
        status = {s["name"]: s for s in agent.get("/status")["services"]}[web]
        assert status["state"] == "crashloop"
        assert status["restarts"] >= 5
        assert status["health"]["last_error"] == "http 503"
        assert "unhealthy: http 503" in status["last_error"]
        logged = restarts_logged(agent)
        assert all(reason == "unhealthy: http 503" for reason, _ in logged)
        # Doubling from 0.3 s with +-20% jitter, never above the 1.2 s cap.
        for (_, delay), nominal in zip(logged, (0.3, 0.6, 1.2, 1.2), strict=False):
            assert nominal * 0.8 - 0.001 <= delay <= min(1.2, nominal * 1.2) + 0.001

        # Recovery: a passing check after the grace period resets it all.
        control.write_text("ok")
        wait_for(
            lambda: (
                health().get("status") == "healthy"
                and {s["name"]: s for s in agent.get("/status")["services"]}[web][
                    "state"
                ]
                == "running"
            ),
            timeout=15,
            what=f"recovered\n{agent.log()}",
        )
        before = len(restarts_logged(agent))
        control.write_text("fail")
        wait_for(
            lambda: len(restarts_logged(agent)) > before,
            timeout=15,
            what="restart after recovery",
        )
        _, delay = restarts_logged(agent)[before]
        assert delay <= 0.3 * 1.2  # back at the initial delay
    finally:
        stop_process_group(server)
