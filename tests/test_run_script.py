"""``make run`` (``scripts/run.sh``) on embedded defaults, as a user starts it.

The real script in its own session: SQLite and the object store in a temporary
var directory, gunicorn on a free loopback port. By default Celery runs tasks
without a broker, in the web process; with the directory broker a Celery worker
starts alongside and takes the runs. Either way Ctrl-C (SIGINT to the process
group) stops every process the script started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
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


Start = Callable[..., Running]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """Starts ``scripts/run.sh`` with extra environment; kills what is left."""
    started: list[Running] = []

    def run(**env_changes: str) -> Running:
        (port,) = free_ports(1)
        var = tmp_path / "var"
        env = embedded_env() | {
            "PORT": str(port),
            "FIREWORK_VAR_DIR": str(var),
            "FIREWORK_STORE_DIR": str(tmp_path / "objectstore"),
            "WEB_CONCURRENCY": "2",
            **env_changes,
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
        started.append(Running(proc, f"http://127.0.0.1:{port}", var, output))
        wait_until(
            "the dashboard",
            lambda: healthy(started[-1].url),
            started[-1],
            START_TIMEOUT,
        )
        return started[-1]

    yield run
    for running in started:
        if running.proc.poll() is None:
            os.killpg(running.proc.pid, signal.SIGKILL)
        for pid in group_members(running.proc.pid):
            os.kill(pid, signal.SIGKILL)
        running.proc.wait(timeout=10)


def api_client(running: Running) -> httpx.Client:
    """The control plane's API as the operator the script made."""
    token = token_for_admin(running.var)
    return httpx.Client(
        base_url=running.url,
        headers={"Authorization": f"Token {token}"},
        trust_env=False,
        timeout=30,
    )


def stop_with_ctrl_c(running: Running) -> None:
    os.killpg(running.proc.pid, signal.SIGINT)
    running.proc.wait(timeout=30)
    wait_until(
        "every process gone",
        lambda: not group_members(running.proc.pid),
        running,
        30,
        alive=False,
    )


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


def test_make_run_runs_tasks_without_a_broker_and_stops_on_ctrl_c(
    start: Start,
) -> None:
    running = start()
    assert "revision 1: succeeded" in running.text()
    assert (running.var / "admin-password").is_file()
    assert not (running.var / "worker.log").exists()  # no worker, no broker

    api = api_client(running)
    queued = api.post("/api/v1/repositories/1/runs/", json={})
    assert queued.status_code == 202, queued.text
    revision = queued.json()["id"]
    # Without a broker the run is done by the time the request is answered.
    assert api.get(f"/api/v1/revisions/{revision}/").json()["status"] == "succeeded"

    stop_with_ctrl_c(running)


def test_with_the_directory_broker_a_worker_takes_the_runs(start: Start) -> None:
    running = start(CELERY_BROKER_URL="filesystem://localhost/")
    assert "revision 1: succeeded" in running.text()

    api = api_client(running)
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

    stop_with_ctrl_c(running)
