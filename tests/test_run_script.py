"""``make run`` (``scripts/run.sh``) on embedded defaults, as a user starts it.

One run of the real script in its own session: SQLite and the object store in
a temporary var directory, gunicorn on a free loopback port, and a Celery worker
on the directory broker. A run asked for through the API is answered at once
and done by the worker, and Ctrl-C (SIGINT to the process group) stops every
process the script started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_ports

ROOT = Path(__file__).parent.parent
START_TIMEOUT = 120


@dataclass(frozen=True)
class Running:
    proc: subprocess.Popen[bytes]
    url: str
    var: Path
    output: Path

    def text(self) -> str:
        return self.output.read_text(errors="replace")


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) == pgid:
                members.append(int(entry.name))
        except ProcessLookupError:
            continue
    return members


def wait_until(
    what: str, ready: object, running: Running, timeout: float, *, alive: bool = True
) -> None:
    """Until ``ready()``; with ``alive``, failing at once if the script ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(ready) and ready():
            return
        if alive and running.proc.poll() is not None:
            pytest.fail(f"run.sh exited while waiting for {what}:\n{running.text()}")
        time.sleep(0.1)
    pytest.fail(f"{what} not seen in {timeout}s:\n{running.text()[-3000:]}")


def healthy(url: str) -> bool:
    try:
        return (
            httpx.get(f"{url}/healthz", timeout=2, trust_env=False).status_code == 200
        )
    except httpx.HTTPError:
        return False


def embedded_env() -> dict[str, str]:
    """This environment without the suite's settings: the script's defaults apply."""
    own = ("DATABASE_", "CELERY_", "FIREWORK_", "DJANGO_", "S3_", "AWS_")
    return {k: v for k, v in os.environ.items() if not k.startswith(own)}


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    (port,) = free_ports(1)
    var = tmp_path / "var"
    env = embedded_env() | {
        "PORT": str(port),
        "FIREWORK_VAR_DIR": str(var),
        "FIREWORK_STORE_DIR": str(tmp_path / "objectstore"),
        "WEB_CONCURRENCY": "2",
    }
    output = tmp_path / "run.out"
    with output.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", "scripts/run.sh"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started = Running(proc, f"http://127.0.0.1:{port}", var, output)
    try:
        yield started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in group_members(proc.pid):
            os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=10)


def token_for_admin(var: Path) -> str:
    env = embedded_env() | {"FIREWORK_VAR_DIR": str(var)}
    done = subprocess.run(
        [".venv/bin/python", "manage.py", "create_api_token", "admin"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.strip()


def test_make_run_serves_runs_through_a_worker_and_stops_on_ctrl_c(
    running: Running,
) -> None:
    wait_until("the dashboard", lambda: healthy(running.url), running, START_TIMEOUT)
    assert "revision 1: succeeded" in running.text()
    assert (running.var / "admin-password").is_file()

    token = token_for_admin(running.var)
    api = httpx.Client(
        base_url=running.url,
        headers={"Authorization": f"Token {token}"},
        trust_env=False,
        timeout=10,
    )
    queued = api.post("/api/v1/repositories/1/runs/", json={})
    assert queued.status_code == 202, queued.text
    revision = queued.json()["id"]
    assert queued.json()["status"] == "queued"  # answered before the run

    def finished() -> bool:
        status = api.get(f"/api/v1/revisions/{revision}/").json()["status"]
        return status not in ("queued", "running")

    wait_until("the worker's run", finished, running, 60)
    assert api.get(f"/api/v1/revisions/{revision}/").json()["status"] == "succeeded"
    worker_log = (running.var / "worker.log").read_text()
    assert f"run finished revision={revision} status=succeeded" in worker_log

    os.killpg(running.proc.pid, signal.SIGINT)
    running.proc.wait(timeout=30)
    wait_until(
        "every process gone",
        lambda: not group_members(running.proc.pid),
        running,
        30,
        alive=False,
    )
