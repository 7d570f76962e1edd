"""The gunicorn settings deployments use (``firework_site/gunicorn_conf.py``).

One real gunicorn master with the settings, on SQLite, serving loopback: the
worker count, the frozen heap, and a dead worker's gauges leaving the shared
metrics directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from firework_site.gunicorn_conf import default_workers
from tests.conftest import free_ports, stop_process_group

ROOT = Path(__file__).parent.parent
HOST = "127.0.0.1"


def test_workers_follow_web_concurrency() -> None:
    assert default_workers({"WEB_CONCURRENCY": "5"}) == 5
    assert default_workers({"WEB_CONCURRENCY": "0"}) == 1


def test_workers_default_to_one_per_cpu_and_at_least_two() -> None:
    cpus = len(os.sched_getaffinity(0))
    assert default_workers({}) == max(2, cpus)
    assert default_workers({"WEB_CONCURRENCY": " "}) == max(2, cpus)


@dataclass(frozen=True)
class Master:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def workers(self) -> list[int]:
        pid = self.proc.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return sorted(int(child) for child in children)


def wait_for(what: str, ready: object, master: Master, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if master.proc.poll() is not None:
            pytest.fail(f"gunicorn exited:\n{master.log.read_text()[-2000:]}")
        if callable(ready) and ready():
            return
        time.sleep(0.05)
    pytest.fail(f"{what} not seen in time:\n{master.log.read_text()[-2000:]}")


def answers(port: int) -> bool:
    try:
        url = f"http://{HOST}:{port}/healthz"
        return httpx.get(url, timeout=1, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def master(tmp_path: Path) -> Iterator[Master]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "firework_site.settings",
        "FIREWORK_VAR_DIR": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "FIREWORK_LOG_LEVEL": "WARNING",
        "WEB_CONCURRENCY": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    (tmp_path / "metrics").mkdir()
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"],
        env=env,
        cwd=ROOT,
        check=True,
        timeout=120,
    )
    (port,) = free_ports(1)
    log = tmp_path / "gunicorn.log"
    command = [
        *(sys.executable, "-m", "gunicorn", "-c", "python:firework_site.gunicorn_conf"),
        *("--bind", f"{HOST}:{port}", "firework_site.wsgi:application"),
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command,
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    running = Master(proc, port, log)
    try:
        wait_for("/healthz", lambda: answers(port), running)
        yield running
    finally:
        stop_process_group(proc)


def test_the_master_freezes_the_app_heap_then_forks_the_workers(
    master: Master,
) -> None:
    wait_for("two workers", lambda: len(master.workers()) == 2, master)
    text = master.log.read_text()
    assert "app objects frozen out of gc count=" in text
    frozen = int(text.split("app objects frozen out of gc count=")[1].split()[0])
    assert frozen > 10_000  # Django and the app, loaded once in the master


def test_a_dead_workers_live_gauges_leave_the_metrics_dir(
    master: Master, tmp_path: Path
) -> None:
    wait_for("two workers", lambda: len(master.workers()) == 2, master)
    victim = master.workers()[0]
    # What a livesum gauge of that worker would have written.
    gauge = tmp_path / "metrics" / f"gauge_livesum_{victim}.db"
    gauge.write_bytes(b"\0" * 16)

    os.kill(victim, signal.SIGKILL)

    wait_for("the gauge file removed", lambda: not gauge.exists(), master)
    wait_for(
        "a replacement worker",
        lambda: len(w := master.workers()) == 2 and victim not in w,
        master,
    )
    assert answers(master.port)
