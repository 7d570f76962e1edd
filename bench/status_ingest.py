"""Status reports per second the control plane ingests, and their latency.

Run: ``python bench/status_ingest.py [--nodes 50] [--seconds 15] [--workers 4]``.

Everything is real and local: a throwaway PostgreSQL cluster (Debian's
``postgresql`` package, started as .ci/run does), the migrated control plane
under gunicorn with ``PROMETHEUS_MULTIPROC_DIR`` set, and one node with a node
token per simulated agent. Each agent is a thread that posts a ten-service report
to ``/api/v1/nodes/<name>/status`` in a loop (``--rate`` spreads a total rate over
the agents instead). Prints reports/s and p50/p99 latency against the targets, and
checks that the control plane's ``/metrics`` counted every stored report.

With ``--rate 0`` (the default) each agent posts as soon as its last report is
answered, so the figures are the saturated throughput, and the latency includes
waiting for a free gunicorn worker: by Little's law about agents / throughput.
"""

from __future__ import annotations

import argparse
import glob
import http.client
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client.parser import text_string_to_metric_families

from tests.celerystack import BIN, HOST, ROOT, manage, migrate, stack_env
from tests.conftest import free_ports, stop_process_group

TARGET_RATE = 500.0
TARGET_P99_SECONDS = 0.100
SERVICES = 10
SHA = "3f786850e387550fdab836ed7e6dc881de23001b"
START_TIMEOUT = 30.0
# Made inside the control plane's own environment: one node token per node.
MAKE_NODES = """
import json
from controlplane.models import Node
from controlplane.nodetokens import issue_node_token
tokens = {}
for n in range(%d):
    node = Node.objects.create(name=f"bench-{n:03d}", labels=["general-purpose"])
    tokens[node.name] = issue_node_token(node)
print(json.dumps(tokens))
"""


def pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        sys.exit(f"{name} not found: apt-get install postgresql")
    return found[-1]


@contextmanager
def postgres(fsync: bool) -> Iterator[str]:
    """A PostgreSQL cluster of its own on a free loopback port; yields its URL."""
    base = Path(tempfile.mkdtemp(prefix="firework-bench-pg-"))
    shutil.chown(base, "postgres")
    as_pg = ["runuser", "-u", "postgres", "--"]
    data, (port,) = base / "data", free_ports(1)
    initdb = [pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]
    subprocess.run([*as_pg, *initdb, "--no-sync"], check=True, capture_output=True)
    options = (
        f"-c listen_addresses={HOST} -c port={port} -c unix_socket_directories={base}"
        f" -c fsync={'on' if fsync else 'off'} -c max_connections=200"
    )
    pg_ctl = [*as_pg, pg_bin("pg_ctl"), "-D", str(data), "-w"]
    log = ["-l", str(base / "log")]
    subprocess.run(
        [*pg_ctl, *log, "-o", options, "start"], check=True, capture_output=True
    )
    try:
        subprocess.run(
            [*as_pg, pg_bin("createdb"), "-h", HOST, "-p", str(port), "firework"],
            check=True,
        )
        yield f"postgres://postgres@{HOST}:{port}/firework"
    finally:
        subprocess.run([*pg_ctl, "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def gunicorn(env: dict[str, str], workers: int, log_path: Path) -> Iterator[int]:
    """The control plane under gunicorn on a free port; yields the port."""
    (port,) = free_ports(1)
    command = [
        str(BIN / "gunicorn"),
        *("firework_site.wsgi:application", "--bind", f"{HOST}:{port}"),
        *("--workers", str(workers), "--error-logfile", "-"),
    ]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_answering(proc, port, log_path)
        yield port
    finally:
        stop_process_group(proc)


def wait_until_answering(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"gunicorn exited:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if get(port, "/healthz")[0] == 200:
                return
        except OSError:
            time.sleep(0.05)
    sys.exit("gunicorn did not answer /healthz in time")


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


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


def report_body(node: str, seq: int) -> bytes:
    """A realistic report; every 20th one flips a service's health, as drift does."""
    services = [service(n) for n in range(SERVICES)]
    if seq % 20 == 19:
        services[seq % SERVICES]["health"]["status"] = "unhealthy"
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
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "agent_version": "0.4.0",
            "host": {"kernel": "6.1.0", "cpus": 8},
        }
    ).encode()


@dataclass(eq=False)  # threads must stay hashable
class Agent(threading.Thread):
    """One simulated node agent posting its report until ``stop_at``."""

    port: int
    node: str
    token: str
    start_at: float  # agents start spread out, as real ones do
    stop_at: float
    interval: float  # seconds between sends; 0 = as soon as answered
    samples: list[tuple[float, float, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(daemon=True)

    def run(self) -> None:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Content-Type": "application/json",
        }
        path, seq, next_at = f"/api/v1/nodes/{self.node}/status", 0, self.start_at
        while next_at < self.stop_at:
            time.sleep(max(0.0, next_at - time.monotonic()))
            body = report_body(self.node, seq)
            started = time.monotonic()
            try:
                conn.request("POST", path, body, headers)
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                conn.close()
                status = 0
            self.samples.append((started, time.monotonic() - started, status))
            seq += 1
            next_at = next_at + self.interval if self.interval else time.monotonic()
        conn.close()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def load(
    port: int, tokens: dict[str, str], args: argparse.Namespace
) -> tuple[list[Any], float]:
    """Run the agents; return the samples taken after the warm-up second, and
    the share of one core the agents themselves used."""
    begin, cpu = time.monotonic(), time.process_time()
    interval = len(tokens) / args.rate if args.rate else 0.0
    step = (interval or 0.2) / len(tokens)
    end = begin + 1.0 + args.seconds
    agents = [
        Agent(port, node, token, begin + i * step, end, interval)
        for i, (node, token) in enumerate(sorted(tokens.items()))
    ]
    for agent in agents:
        agent.start()
    for agent in agents:
        agent.join()
    used = (time.process_time() - cpu) / (time.monotonic() - begin)
    return [s for a in agents for s in a.samples if s[0] >= begin + 1.0], used


def stored_per_metrics(port: int) -> float:
    """What ``/metrics`` says was stored, summed over every gunicorn worker."""
    status, body = get(port, "/metrics")
    if status != 200:
        sys.exit(f"/metrics answered {status}")
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == "firework_node_reports_total" and sample.labels == {
                "outcome": "ok"
            }:
                return sample.value
    return 0.0


def summarize(
    samples: list[Any], used: float, args: argparse.Namespace, counted: float
) -> None:
    ok = [latency for _, latency, status in samples if status == 204]
    failed = len(samples) - len(ok)
    rate = len(ok) / args.seconds
    p50, p99 = percentile(ok, 0.5), percentile(ok, 0.99)
    mode = f"{args.rate:.0f}/s offered" if args.rate else "closed loop"
    print(
        f"status ingest: {args.nodes} agents ({mode}), {SERVICES} services each, "
        f"{args.workers} gunicorn workers, PostgreSQL fsync={args.fsync}, "
        f"CONN_MAX_AGE={args.conn_max_age}"
    )
    print(f"  {len(ok)} reports in {args.seconds:.0f} s, {failed} failed")
    print(f"  {rate:.0f} reports/s   p50 {p50 * 1000:.1f} ms   p99 {p99 * 1000:.1f} ms")
    print(
        f"  rate / target ({TARGET_RATE:.0f}/s): {rate / TARGET_RATE:.2f}   "
        f"p99 / target ({TARGET_P99_SECONDS * 1000:.0f} ms): "
        f"{p99 / TARGET_P99_SECONDS:.2f}"
    )
    print(f"  the simulated agents used {used:.0%} of one core (same machine)")
    print(f"  /metrics counted {counted:.0f} stored reports (all workers, warm-up too)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rate", type=float, default=0.0, help="total reports/s")
    parser.add_argument("--conn-max-age", type=int, default=60)
    parser.add_argument("--fsync", action="store_true", help="PostgreSQL fsync on")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="firework-bench-") as tmp,
        postgres(args.fsync) as url,
    ):
        workdir = Path(tmp)
        (workdir / "prometheus").mkdir()
        env = stack_env(
            workdir,
            {
                "DATABASE_URL": url,
                "DATABASE_CONN_MAX_AGE": str(args.conn_max_age),
                "PROMETHEUS_MULTIPROC_DIR": str(workdir / "prometheus"),
                "FIREWORK_LOG_LEVEL": "WARNING",
            },
        )
        migrate(env)
        made = manage(env, "shell", "-v", "0", "-c", MAKE_NODES % args.nodes)
        tokens = json.loads(made.strip().splitlines()[-1])
        with gunicorn(env, args.workers, workdir / "gunicorn.log") as port:
            samples, used = load(port, tokens, args)
            summarize(samples, used, args, stored_per_metrics(port))


if __name__ == "__main__":
    main()
