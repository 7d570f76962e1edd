"""Status reports per second the control plane ingests, and their latency.

Run: ``python bench/status_ingest.py`` (``--help`` for the knobs).

Everything is real and local: a throwaway PostgreSQL cluster (Debian's
``postgresql`` package, started as .ci/run does), the migrated control plane
under gunicorn with ``PROMETHEUS_MULTIPROC_DIR`` set, and one node with its own
node token per simulated agent (``bench/ingest_load.py``). Each agent posts a
ten-service report to ``/api/v1/nodes/<name>/status``; one report in ten
changes a service's health (the agents' changes staggered, as independent
nodes' are), so transitions are written too. gunicorn runs as deployed: plain
``gunicorn -c python:firework_site.gunicorn_conf`` with the worker options printed.

Two measurements on the same stack:

- saturated: every agent posts as soon as its last report is answered, so the
  rate is the most the stack ingests (latency there is queueing, by Little's
  law about agents / rate, and is not the figure to judge);
- at the target rate: the agents together offer ``--rate`` reports/s on a
  fixed schedule, and p50/p99 are measured from when each report was due.

Prints both against the targets, the CPU the server, PostgreSQL and the agents
used (they share the machine), and checks that ``/metrics`` counted every
stored report.
"""

from __future__ import annotations

import argparse
import glob
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client.parser import text_string_to_metric_families

from bench.ingest_load import SERVICES, Plan, Sample, cpu_window, run_agents
from tests.celerystack import BIN, HOST, ROOT, manage, migrate, stack_env
from tests.conftest import free_ports, stop_process_group

TARGET_RATE = 500.0
TARGET_P99_SECONDS = 0.100
WARM_UP_SECONDS = 1.0
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


@dataclass(frozen=True)
class Stack:
    """The running control plane: its port, and the roots of its processes."""

    port: int
    gunicorn_pid: int
    postgres_pid: int


def pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        sys.exit(f"{name} not found: apt-get install postgresql")
    return found[-1]


@contextmanager
def postgres(fsync: bool) -> Iterator[tuple[str, int]]:
    """A PostgreSQL cluster of its own on a free port; yields its URL and pid."""
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
        pid = int((data / "postmaster.pid").read_text().split()[0])
        yield f"postgres://postgres@{HOST}:{port}/firework", pid
    finally:
        subprocess.run([*pg_ctl, "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def gunicorn_options(args: argparse.Namespace) -> list[str]:
    """Workers, and threads per worker for the gthread worker class."""
    options = ["--workers", str(args.workers), "--worker-class", args.worker_class]
    if args.worker_class == "gthread":
        options += ["--threads", str(args.threads)]
    return options


@contextmanager
def gunicorn(
    env: dict[str, str], options: list[str], log_path: Path
) -> Iterator[tuple[int, int]]:
    """The control plane under gunicorn on a free port; yields the port and pid."""
    (port,) = free_ports(1)
    command = [
        str(BIN / "gunicorn"),
        *("-c", "python:firework_site.gunicorn_conf"),
        *("firework_site.wsgi:application", "--bind", f"{HOST}:{port}"),
        *options,
        *("--error-logfile", "-"),
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
        yield port, proc.pid
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


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


@dataclass(frozen=True)
class Result:
    """One measurement: what was answered after the warm-up, and its cost."""

    samples: list[Sample]
    cpu: dict[str, float]  # who -> cores used on average

    window: tuple[float, float]  # monotonic start and end of the measurement

    @property
    def stored(self) -> list[float]:
        """Latencies of the stored reports that were due in the window."""
        start, end = self.window
        return [
            latency
            for due, latency, status in self.samples
            if status == 204 and start <= due < end
        ]

    @property
    def rate(self) -> float:
        """Stored reports answered in the window, per second."""
        start, end = self.window
        answered = [
            due + latency
            for due, latency, status in self.samples
            if status == 204 and start <= due + latency < end
        ]
        return len(answered) / (end - start)

    @property
    def failed(self) -> int:
        start = self.window[0]
        return sum(
            1 for due, _, status in self.samples if status != 204 and due >= start
        )


def measure(
    stack: Stack, tokens: dict[str, str], args: argparse.Namespace, rate: float
) -> Result:
    """Run the agents for the warm-up and ``args.seconds``; ``rate`` 0: saturate."""
    begin = time.monotonic() + 0.2  # time for the client processes to start
    interval = len(tokens) / rate if rate else 0.0
    plan = Plan(
        port=stack.port,
        start_at=begin,
        stop_at=begin + WARM_UP_SECONDS + args.seconds,
        interval=interval,
        spread=(interval or 0.2) / len(tokens),
    )
    window = (begin + WARM_UP_SECONDS, plan.stop_at)
    # CPU is read at the window's edges, so the warm-up (each worker's first
    # requests import the URLconf and connect) is not counted
    with cpu_window(stack.gunicorn_pid, stack.postgres_pid, window) as cpu:
        samples = run_agents(plan, tokens, args.clients)
    return Result(samples, cpu, window)


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


def show(title: str, result: Result) -> None:
    ok = result.stored
    p50, p99 = percentile(ok, 0.5), percentile(ok, 0.99)
    cores = ", ".join(f"{who} {used:.2f}" for who, used in result.cpu.items())
    cores += f" (of {os.cpu_count()})"
    seconds = result.window[1] - result.window[0]
    print(f"  {title}: {len(ok)} reports in {seconds:.0f} s, {result.failed} failed")
    print(
        f"    {result.rate:.0f} reports/s   p50 {p50 * 1000:.1f} ms   "
        f"p99 {p99 * 1000:.1f} ms"
    )
    print(f"    CPU cores used: {cores}")


def verdict(saturated: Result | None, at_rate: Result) -> None:
    """The figures the targets are about, as ratios (>= 1 and <= 1 pass)."""
    best = max(at_rate.rate, saturated.rate if saturated else 0.0)
    p99 = percentile(at_rate.stored, 0.99)
    print(
        f"  rate / target ({TARGET_RATE:.0f}/s): {best / TARGET_RATE:.2f}   "
        f"p99 at {at_rate.rate:.0f}/s / target ({TARGET_P99_SECONDS * 1000:.0f} ms):"
        f" {p99 / TARGET_P99_SECONDS:.2f}"
    )


def run(stack: Stack, tokens: dict[str, str], args: argparse.Namespace) -> None:
    print(
        f"status ingest: {args.nodes} agents in {args.clients} client processes, "
        f"{SERVICES} services a report, gunicorn {' '.join(gunicorn_options(args))},"
        f" PostgreSQL fsync={args.fsync}, CONN_MAX_AGE={args.conn_max_age}"
    )
    saturated = None
    if not args.no_saturate:
        saturated = measure(stack, tokens, args, 0.0)
        show("saturated (each agent posts when answered)", saturated)
    at_rate = measure(stack, tokens, args, args.rate)
    show(f"offered {args.rate:.0f} reports/s on a fixed schedule", at_rate)
    verdict(saturated, at_rate)
    counted = stored_per_metrics(stack.port)
    print(f"  /metrics counted {counted:.0f} stored reports (warm-ups too)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=50, help="simulated agents")
    parser.add_argument("--seconds", type=float, default=15.0, help="per measurement")
    parser.add_argument("--rate", type=float, default=TARGET_RATE, help="reports/s")
    parser.add_argument(
        "--no-saturate", action="store_true", help="only the fixed-rate measurement"
    )
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--worker-class", choices=["sync", "gthread"], default="sync")
    parser.add_argument("--threads", type=int, default=2, help="gthread only")
    parser.add_argument("--clients", type=int, default=1, help="client processes")
    parser.add_argument("--conn-max-age", type=int, default=60)
    parser.add_argument("--fsync", action="store_true", help="PostgreSQL fsync on")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="firework-bench-") as tmp,
        postgres(args.fsync) as (url, postgres_pid),
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
        options = gunicorn_options(args)
        with gunicorn(env, options, workdir / "gunicorn.log") as (port, pid):
            run(Stack(port, pid, postgres_pid), tokens, args)


if __name__ == "__main__":
    main()
