"""The parts of a running control plane, started for tests and the bench.

Everything here is real: a ``redis-server`` process, a Celery worker process, the
Django side as subprocesses on a database of their own (a SQLite file, or a fresh
database on the PostgreSQL server of ``DATABASE_URL``), and Git over HTTP.
Nothing listens beyond 127.0.0.1. No pytest here, so ``bench/`` can use it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from tests.conftest import free_ports, stop_process_group

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
POLL_SECONDS = 0.05
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class StackError(RuntimeError):
    """A part of the stack did not start, or a command failed."""


def _log_tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def _stop_all(procs: list[subprocess.Popen[Any]]) -> None:
    """Stop ``procs`` together: signal them all, then wait for each."""
    for proc in procs:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        stop_process_group(proc)


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """Run ``redis-server`` on a free loopback port; yield its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise StackError("redis-server not found: apt-get install redis-server")
    (port,) = free_ports(1)
    log_path = workdir / "redis.log"
    command = [
        binary,
        *("--bind", HOST, "--port", str(port), "--save", "", "--appendonly", "no"),
        *("--dir", str(workdir), "--logfile", str(log_path)),
    ]
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_redis(proc, port, log_path)
        yield f"redis://{HOST}:{port}/0"
    finally:
        stop_process_group(proc)


def _wait_for_redis(proc: subprocess.Popen[Any], port: int, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"redis-server exited:\n{_log_tail(log_path)}")
        try:
            with socket.create_connection((HOST, port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.02)
    raise StackError(f"redis-server not ready:\n{_log_tail(log_path)}")


@contextmanager
def database(workdir: Path, base_url: str = "") -> Iterator[str]:
    """A database URL for the stack alone, deleted afterwards.

    With a PostgreSQL ``base_url`` (the suite's ``DATABASE_URL`` in CI), a fresh
    database on that server; otherwise a SQLite file in ``workdir``.
    """
    if urlsplit(base_url).scheme not in ("postgres", "postgresql"):
        yield f"sqlite:///{workdir / 'controlplane.sqlite3'}"
        return
    import psycopg

    name = f"firework_stack_{uuid.uuid4().hex[:12]}"
    admin = urlunsplit(urlsplit(base_url)._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(base_url)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def stack_env(workdir: Path, settings: Mapping[str, str]) -> dict[str, str]:
    """The environment of every stack process: ours, then ``settings`` on top."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_URL", "CELERY_", "FIREWORK_", "S3_", "AWS_"))
    }
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "firework_site.settings",
            "PYTHONPATH": str(ROOT),
            "FIREWORK_VAR_DIR": str(workdir / "var"),
            "FIREWORK_GIT_CACHE_DIR": str(workdir / "git-cache"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    env.update(settings)
    return env


def manage(env: Mapping[str, str], *args: str) -> str:
    """Run ``manage.py ARGS`` in the stack's environment; return its stdout."""
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise StackError(f"manage.py {args[0]} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def migrate(env: Mapping[str, str]) -> None:
    """``manage.py migrate`` on the stack's database."""
    manage(env, "migrate", "--no-input", "-v", "0")


def _web(port: int) -> list[str]:
    return [
        str(BIN / "gunicorn"),
        *("-c", "python:firework_site.gunicorn_conf"),  # as deployed
        *("firework_site.wsgi:application", "--bind", f"{HOST}:{port}"),
        *("--workers", "1", "--error-logfile", "-"),
    ]


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def _worker() -> list[str]:
    return [
        str(BIN / "celery"),
        *("-A", "firework_site", "worker", "--pool", "solo", "-c", "1"),
        *("--loglevel", "INFO", "--without-gossip", "--without-mingle"),
        *("--without-heartbeat", "-n", f"stack-{uuid.uuid4().hex[:8]}@%h"),
    ]


@contextmanager
def processes(env: Mapping[str, str], workers: list[Path], web: Path) -> Iterator[str]:
    """Celery workers (one per log path) and gunicorn, started side by side
    since each takes about a second to come up; yields the web URL."""
    (port,) = free_ports(1)
    url = f"http://{HOST}:{port}"
    procs = [_spawn(_worker(), env, log) for log in workers]
    procs.append(_spawn(_web(port), env, web))
    try:
        for proc, log in zip(procs, workers, strict=False):
            _wait_until(proc, log, partial(_logged, log, " ready."), "celery worker")
        _wait_until(procs[-1], web, partial(_answers, f"{url}/healthz"), "web")
        yield url
    finally:
        _stop_all(procs)


def _logged(log: Path, marker: str) -> bool:
    return marker in log.read_text(errors="replace")


def _spawn(
    command: list[str], env: Mapping[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_until(
    proc: subprocess.Popen[bytes], log_path: Path, ready: Callable[[], bool], what: str
) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if ready():
            return
        if proc.poll() is not None:
            raise StackError(f"{what} exited:\n{_log_tail(log_path)}")
        time.sleep(POLL_SECONDS)
    raise StackError(f"{what} not ready:\n{_log_tail(log_path)}")


def sign(body: bytes, secret: str) -> str:
    """The ``X-Hub-Signature-256`` GitHub sends with ``body``."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class ControlPlane:
    """The web side as GitHub and automation see it: webhook and REST API."""

    def __init__(self, url: str, api_token: str, webhook_secret: str) -> None:
        self.url = url
        self.secret = webhook_secret
        self.http = httpx.Client(
            base_url=url,
            timeout=30,
            trust_env=False,
            headers={"Authorization": f"Token {api_token}"},
        )

    def close(self) -> None:
        """Close the HTTP connections."""
        self.http.close()

    def push(self, full_name: str, sha: str, branch: str = "main") -> httpx.Response:
        """Deliver a signed ``push`` event for ``sha`` on ``branch``."""
        body = json.dumps(
            {
                "ref": f"refs/heads/{branch}",
                "before": "0" * 40,
                "after": sha,
                "repository": {"full_name": full_name},
            }
        ).encode()
        headers = {
            "Content-Type": "application/json",
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": sign(body, self.secret),
        }
        # the API token is no part of a webhook delivery
        return httpx.post(
            f"{self.url}/webhooks/github/",
            content=body,
            headers=headers,
            timeout=30,
            trust_env=False,
        )

    def revision(self, revision_id: int) -> dict[str, Any]:
        """The revision as the REST API shows it."""
        response = self.http.get(f"/api/v1/revisions/{revision_id}/")
        response.raise_for_status()
        found: dict[str, Any] = response.json()
        return found

    def wait_finished(self, revision_id: int, timeout: float = 30.0) -> dict[str, Any]:
        """Poll the API until the revision is finished; return it."""
        deadline = time.monotonic() + timeout
        revision: dict[str, Any] = {}
        while time.monotonic() < deadline:
            revision = self.revision(revision_id)
            if revision["status"] in ("succeeded", "failed", "superseded"):
                return revision
            time.sleep(POLL_SECONDS)
        raise StackError(f"revision {revision_id} not finished: {revision}")


@dataclass(frozen=True)
class S3Target:
    """Where the stack publishes: an S3 endpoint, its keys, a bucket and prefix."""

    endpoint_url: str
    region: str
    access_key: str
    secret_key: str
    bucket: str
    prefix: str = ""


@dataclass
class Stack:
    """A running control plane: its web side, and the logs of its processes."""

    plane: ControlPlane
    env: dict[str, str]
    worker_logs: list[Path]
    web_log: Path


REPOSITORY = "ops"
FULL_NAME = "acme/ops"
TOKEN_ENV = "FIREWORK_OPS_TOKEN"
SECRET_ENV = "FIREWORK_OPS_WEBHOOK_SECRET"


@contextmanager
def control_plane(
    workdir: Path,
    *,
    clone_url: str,
    git_token: str,
    s3: S3Target,
    database_base_url: str = "",
    workers: int = 1,
) -> Iterator[Stack]:
    """Redis, a migrated database, ``workers`` Celery workers and the web side.

    One repository is registered: ``ops`` (GitHub name ``acme/ops``) cloned from
    ``clone_url`` with ``git_token``, publishing to ``s3``.
    """
    secret = uuid.uuid4().hex
    with (
        redis_server(workdir) as broker,
        database(workdir, database_base_url) as database_url,
    ):
        env = stack_env(
            workdir,
            {
                "DATABASE_URL": database_url,
                "CELERY_BROKER_URL": broker,
                TOKEN_ENV: git_token,
                SECRET_ENV: secret,
                "FIREWORK_STORE": "s3",
                "S3_BUCKET": s3.bucket,
                "S3_PREFIX": s3.prefix,
                "S3_ENDPOINT_URL": s3.endpoint_url,
                "S3_REGION": s3.region,
                "AWS_ACCESS_KEY_ID": s3.access_key,
                "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            },
        )
        migrate(env)
        api_token = _register(env, clone_url)
        worker_logs = [workdir / f"worker{n}.log" for n in range(workers)]
        web_log = workdir / "web.log"
        with processes(env, worker_logs, web_log) as url:
            plane = ControlPlane(url, api_token, secret)
            try:
                yield Stack(plane, env, worker_logs, web_log)
            finally:
                plane.close()


def _register(env: Mapping[str, str], clone_url: str) -> str:
    """Register the repository and a read-only API user; return the user's token."""
    fields = {
        "name": REPOSITORY,
        "clone_url": clone_url,
        "github_full_name": FULL_NAME,
        "access_token_env": TOKEN_ENV,
        "webhook_secret_env": SECRET_ENV,
    }
    code = "; ".join(
        [
            "from controlplane.models import ConfigRepository",
            "from django.contrib.auth.models import User",
            "from rest_framework.authtoken.models import Token",
            f"ConfigRepository.objects.create(**{fields!r})",
            "user = User.objects.create_user('reader')",
            "print(Token.objects.create(user=user).key)",
        ]
    )
    output = manage(env, "shell", "--no-imports", "-c", code)
    return output.strip().splitlines()[-1]
