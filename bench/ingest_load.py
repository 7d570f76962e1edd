"""The simulated node agents of ``bench/status_ingest.py``, and CPU accounting.

The agents share the machine with the server, so they must cost little: each
client process runs its agents as asyncio tasks speaking plain HTTP/1.1 over
keep-alive sockets (reconnecting when the server closes), and report bodies
are rendered once per node and kind, with only the time filled in per send.
Every agent has its own node, its own node token and its own connection.

Latency is measured from when a report was due, not from when it was sent:
in an open loop (a fixed rate) a slow answer delays the agent's next report,
and that wait is the server's doing, so it counts.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

HOST = "127.0.0.1"
SERVICES = 10
CHANGE_EVERY = 20  # the 20th report of an agent flips a health status
SHA = "3f786850e387550fdab836ed7e6dc881de23001b"
TIME_MARK = b"@@TIME@@"
CONNECT_TIMEOUT = 10.0
Sample = tuple[float, float, int]  # due at, latency in seconds, HTTP status


def service(n: int) -> dict[str, Any]:
    """Service ``n`` as an agent reports it: running and healthy."""
    return {
        "name": f"svc-{n:02d}",
        "state": "running",
        "pid": 4000 + n,
        "health": {
            "status": "healthy",
            "last_checked": "2026-02-05T12:00:00Z",
            "failures": 0,
            "last_error": "",
        },
        "guest_ip": f"172.16.0.{n + 2}",
        "restarts": 0,
        "last_error": "",
        "next_restart_at": None,
    }


def report_template(node: str, variant: int) -> bytes:
    """A realistic report with a time placeholder.

    Variant ``CHANGE_EVERY - 1`` has one service unhealthy, so an agent's
    reports go healthy, then unhealthy once, then healthy again: two changes
    (and two reports that write transitions) in every ``CHANGE_EVERY``.
    """
    services = [service(n) for n in range(SERVICES)]
    if variant == CHANGE_EVERY - 1:
        services[sum(node.encode()) % SERVICES]["health"]["status"] = "unhealthy"
    return json.dumps(
        {
            "node": node,
            "last_revision": SHA,
            "services": services,
            "phase": "running",
            "labels": ["general-purpose"],
            "revisions": {"general-purpose": SHA},
            "stale": False,
            "stale_reason": "",
            "stale_since": None,
            "time": TIME_MARK.decode(),
            "agent_version": "0.4.0",
            "host": {"kernel": "6.1.0", "cpus": 8},
        }
    ).encode()


@dataclass(frozen=True)
class Plan:
    """What every agent does: where, until when, how often."""

    port: int
    start_at: float  # time.monotonic(), the same clock in every process
    stop_at: float
    interval: float  # seconds between an agent's reports; 0 = when answered
    spread: float  # agents start this far apart


class _Connection:
    """One keep-alive HTTP/1.1 connection, reopened when the server closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, request: bytes) -> int:
        if self.streams is None:
            self.streams = await asyncio.wait_for(
                asyncio.open_connection(HOST, self.port), CONNECT_TIMEOUT
            )
        reader, writer = self.streams
        writer.write(request)
        status_line = await reader.readline()
        length, close = 0, False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection":
                close = value.strip().lower() == b"close"
        if length:
            await reader.readexactly(length)
        if close or not status_line:
            self.close()
        return int(status_line.split()[1]) if status_line else 0

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


def _request(path: str, token: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _agent(
    plan: Plan, index: int, node: str, token: str, samples: list[Sample]
) -> None:
    templates = [report_template(node, v) for v in range(CHANGE_EVERY)]
    path, conn = f"/api/v1/nodes/{node}/status", _Connection(plan.port)
    due, seq = plan.start_at + index * plan.spread, 0
    while due < plan.stop_at:
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()).encode()
        # staggered by agent: nodes change independently, not all at once
        body = templates[(seq + index) % CHANGE_EVERY].replace(TIME_MARK, now)
        try:
            status = await conn.post(_request(path, token, body))
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            conn.close()
            status = 0
        answered = time.monotonic()
        samples.append((due, answered - due, status))
        seq += 1
        due = due + plan.interval if plan.interval else answered
    conn.close()


async def _agents(plan: Plan, agents: list[tuple[int, str, str]]) -> list[Sample]:
    samples: list[Sample] = []
    await asyncio.gather(
        *(_agent(plan, i, node, token, samples) for i, node, token in agents)
    )
    return samples


def _client(plan: Plan, agents: list[tuple[int, str, str]], out: Connection) -> None:
    out.send(asyncio.run(_agents(plan, agents)))
    out.close()


def run_agents(plan: Plan, tokens: dict[str, str], processes: int) -> list[Sample]:
    """Every agent's samples, from ``processes`` client processes."""
    agents = [
        (i, node, token) for i, (node, token) in enumerate(sorted(tokens.items()))
    ]
    fork = multiprocessing.get_context("fork")
    running = []
    for n in range(processes):
        receive, send = fork.Pipe(duplex=False)
        proc = fork.Process(target=_client, args=(plan, agents[n::processes], send))
        proc.start()
        send.close()
        running.append((proc, receive))
    samples: list[Sample] = []
    for proc, receive in running:
        samples += receive.recv()
        proc.join()
    return samples


def _ticks(pid: int) -> int:
    """User + system clock ticks of one process so far; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def _children(pid: int) -> set[int]:
    """``pid`` and every process below it."""
    found, todo = {pid}, [pid]
    while todo:
        parent = todo.pop()
        try:
            with open(f"/proc/{parent}/task/{parent}/children") as children:
                kids = {int(kid) for kid in children.read().split()}
        except OSError:
            continue
        todo += kids - found
        found |= kids
    return found


def _tree_ticks(roots: Iterable[int], but: Iterable[int] = ()) -> int:
    """Clock ticks used so far by the process trees under ``roots``, minus ``but``'s."""
    pids = set().union(*(_children(root) for root in roots))
    pids -= set().union(*(_children(root) for root in but))
    return sum(_ticks(pid) for pid in pids)


def machine_busy_seconds() -> float:
    """CPU seconds all processes and the kernel used so far, over every core."""
    with open("/proc/stat") as stat:
        ticks = [int(n) for n in stat.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@contextmanager
def cpu_window(
    server: int, database: int, window: tuple[float, float]
) -> Iterator[dict[str, float]]:
    """Cores used on average within ``window`` (monotonic times), by who.

    Filled in when the block ends: the server's and the database's process
    trees, the agents (this process's tree without those two), and the rest
    of the machine (the kernel's loopback work, and anything else running).
    """
    per_second = os.sysconf("SC_CLK_TCK")
    readings: list[tuple[int, int, int, float]] = []

    def read() -> None:
        readings.append(
            (
                _tree_ticks([server]),
                _tree_ticks([database]),
                _tree_ticks([os.getpid()], but=[server, database]),
                machine_busy_seconds(),
            )
        )

    def sample() -> None:
        for edge in window:
            time.sleep(max(0.0, edge - time.monotonic()))
            read()

    reader = threading.Thread(target=sample, daemon=True)
    reader.start()
    used: dict[str, float] = {}
    yield used
    reader.join()
    (s0, d0, a0, m0), (s1, d1, a1, m1) = readings
    seconds = window[1] - window[0]
    used["gunicorn"] = (s1 - s0) / per_second / seconds
    used["PostgreSQL"] = (d1 - d0) / per_second / seconds
    used["agents"] = (a1 - a0) / per_second / seconds
    accounted = used["gunicorn"] + used["PostgreSQL"] + used["agents"]
    used["rest of the machine"] = max(0.0, (m1 - m0) / seconds - accounted)
