"""All of Firework on one node, with real guests: for the end-to-end test and bench.

Everything but the Firecracker binary is real: a Git server over HTTP with a
token, the control plane (gunicorn, a Celery worker, Redis, a database), a
SeaweedFS S3 server, and ``firework-agent run`` with the Firecracker double booting
the test guest under QEMU (``FCDOUBLE_BACKEND=qemu``). The whole scene lives in
one fresh network namespace that this process enters for its duration: every
server binds that namespace's loopback, the agent builds its bridge, TAPs and
rules in there, and no packet can reach any other network.

No pytest here, so ``bench/e2e_latency.py`` can use it too.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import yaml

from tests.celerystack import FULL_NAME, S3Target, Stack, control_plane, manage
from tests.conftest import S3Server, free_ports, start_s3_server, stop_process_group
from tests.fcdouble.testing import FIRECRACKER_BIN
from tests.gitserver import GitHTTPServer, commit_tree
from tests.guest.build import TestGuest, ensure_test_guest

CLONE_NEWNET = 0x40000000
NODE = "edge"
GIT_TOKEN = "ghp_e2e-token-0451"
PREFIX = "firework/"
BRIDGE = "br-e2e"
SUBNET = "172.31.70.0/24"
GATEWAY = "172.31.70.1"
WEB_FORWARD = 18080
API_FORWARD = 18081
GUEST_PORT = 8080
KERNEL_ARGS = "console=ttyS0 reboot=k panic=1 pci=off init=/sbin/fc-init"
# The agent's log format (nodeagent.commands.LOG_FORMAT) starts with asctime.
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


class SceneError(RuntimeError):
    """A part of the scene did not come up or did not get where it should."""


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


@contextmanager
def own_network_namespace() -> Iterator[str]:
    """Move this thread (and what it starts) into a new network namespace.

    Processes and threads started inside inherit it. On exit every process still
    in there is killed, the namespace is deleted, and the thread is back where it
    was.
    """
    name = f"fwe2e-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
            yield name
        finally:
            _setns(home)
    finally:
        os.close(home)
        _kill_namespace(name)


def _kill_namespace(name: str) -> None:
    pids = subprocess.run(
        ["ip", "netns", "pids", name], capture_output=True, text=True
    ).stdout.split()
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(int(pid), 9)
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


def service_specs(
    guest: TestGuest, images: Path, *, web_memory: int = 128, with_api: bool = True
) -> dict[str, str | None]:
    """The spec repository's files: ``web`` (linked to ``api`` if there) and ``api``.

    Both boot the test guest, each from its own copy of the root filesystem.
    """
    check = {
        "type": "http",
        "port": GUEST_PORT,
        "path": "/health",
        "interval": "1s",
        "timeout": "1s",
        "retries": 3,
    }
    defaults = {
        "node_type": NODE,
        "kernel": str(guest.kernel),
        "initrd": str(guest.initrd),
        "kernel_args": KERNEL_ARGS,
        "vcpus": 1,
        "memory_mb": 128,
        "network": True,
        "health_check": check,
    }
    web: dict[str, Any] = {
        "name": "web",
        "image": str(images / "web.ext4"),
        "memory_mb": web_memory,
        "port_forwards": [{"host_port": WEB_FORWARD, "vm_port": GUEST_PORT}],
        "env": {"GREETING": "hello from web", "ROLE": "web"},
    }
    api = {
        "name": "api",
        "image": str(images / "api.ext4"),
        "port_forwards": [{"host_port": API_FORWARD, "vm_port": GUEST_PORT}],
        "env": {"ROLE": "api"},
    }
    files: dict[str, str | None] = {"defaults.yaml": yaml.safe_dump(defaults)}
    if with_api:
        web["links"] = [{"service": "api", "env": "API_URL", "port": GUEST_PORT}]
        files["services/api.yaml"] = yaml.safe_dump(api)
    else:
        files["services/api.yaml"] = None
    files["services/web.yaml"] = yaml.safe_dump(web)
    return files


@dataclass
class Agent:
    """``firework-agent run`` on the node, with its HTTP API on loopback."""

    config_path: Path
    env: dict[str, str]
    log_path: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    runs: int = 0

    def start(self) -> None:
        """Start the agent (again); wait until its API answers."""
        self.runs += 1
        argv = [sys.executable, "-m", "nodeagent.cli", "run", "--config"]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*argv, str(self.config_path)],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(lambda: self.get("/healthz") is not None, 30, "agent api", self)

    def get(self, path: str) -> Any:
        """The agent API's JSON answer, or None when it does not answer."""
        if self.proc is None or self.proc.poll() is not None:
            raise SceneError(f"agent is not running\n{self.tail()}")
        try:
            response = httpx.get(
                f"http://127.0.0.1:{self.port}{path}", timeout=3, trust_env=False
            )
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code == 200 else None

    def services(self) -> dict[str, dict[str, Any]]:
        """The agent's ``/status`` services by name."""
        status = self.get("/status") or {}
        return {s["name"]: s for s in status.get("services", [])}

    def kill9(self) -> None:
        """SIGKILL the agent alone; its VMs are not its process group."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        """Stop the agent (leaving its VMs running, as SIGTERM does)."""
        if self.proc is not None and self.proc.poll() is None:
            stop_process_group(self.proc)

    def log_lines(self) -> list[str]:
        """The agent's whole log, line by line."""
        return self.log_path.read_text(errors="replace").splitlines()

    def tail(self, lines: int = 60) -> str:
        """The end of the agent's log, for failure messages."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_lines()[-lines:])

    def first_logged(self, pattern: str, after: float = 0.0) -> float | None:
        """Epoch time of the first log line matching ``pattern`` at or after
        ``after`` (the agent logs local time with milliseconds)."""
        compiled = re.compile(pattern)
        for line in self.log_lines():
            stamp = LOG_TIME.match(line)
            if stamp is None or not compiled.search(line):
                continue
            when = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f")
            seconds = when.timestamp()
            if seconds >= after - 0.001:
                return seconds
        return None


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, agent: Agent | None = None
) -> Any:
    """Poll ``predicate`` until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            tail = f"\nagent log:\n{agent.tail()}" if agent is not None else ""
            raise SceneError(f"timed out after {timeout:.0f}s waiting for {what}{tail}")
        time.sleep(0.1)


@dataclass
class Scene:
    """The running scene, as the end-to-end test and the bench use it."""

    workdir: Path
    origin: Path
    images: Path
    guest: TestGuest
    stack: Stack
    s3: S3Server
    agent: Agent
    pushes: list[float] = field(default_factory=list)  # when each was delivered
    revisions: list[dict[str, Any]] = field(default_factory=list)  # their runs

    def push(self, files: dict[str, str | None], message: str) -> dict[str, Any]:
        """Commit ``files``, deliver the signed push; return the finished run."""
        sha = commit_tree(self.origin, files, message)
        self.pushes.append(time.time())
        response = self.stack.plane.push(FULL_NAME, sha)
        if response.status_code != 202:
            raise SceneError(
                f"webhook answered {response.status_code}: {response.text}"
            )
        revision = self.stack.plane.wait_finished(response.json()["revision"], 60)
        if revision["commit_sha"] != sha:
            raise SceneError(f"run finished on {revision['commit_sha']}, not {sha}")
        self.revisions.append(revision)
        return revision

    def api(self, path: str) -> Any:
        """The control plane's REST API answer (as the read-only API user)."""
        response = self.stack.plane.http.get(path)
        response.raise_for_status()
        return response.json()

    def healthy(
        self, names: set[str], replaced: Mapping[str, int] | None = None
    ) -> dict[str, dict[str, Any]] | None:
        """The agent's services when exactly ``names`` run and pass their checks,
        those in ``replaced`` (name -> old pid) with a new VM."""
        services = self.agent.services()
        if set(services) != names:
            return None
        for service in services.values():
            if service["state"] != "running" or service["pid"] <= 0:
                return None
            if service["health"]["status"] != "healthy":
                return None
            if service["pid"] == (replaced or {}).get(service["name"]):
                return None
        return services

    def wait_healthy(
        self,
        names: set[str],
        timeout: float = 240,
        replaced: Mapping[str, int] | None = None,
    ) -> dict[str, Any]:
        """Wait until exactly ``names`` run healthy on the node (``replaced``
        ones in a new VM); return their status."""
        found: dict[str, Any] = wait_until(
            lambda: self.healthy(names, replaced),
            timeout,
            f"{sorted(names)} running and healthy (new: {sorted(replaced or {})})",
            self.agent,
        )
        return found


def _register_node(env: dict[str, str]) -> str:
    """Register the node with the control plane; return an enrollment token."""
    code = "; ".join(
        [
            "from controlplane.models import Node",
            "from controlplane.nodetokens import issue_enrollment_token",
            f"node = Node.objects.create(name={NODE!r}, labels=[{NODE!r}])",
            "print(issue_enrollment_token(node)[0])",
        ]
    )
    return manage(env, "shell", "--no-imports", "-c", code).strip().splitlines()[-1]


def _agent(
    workdir: Path, stack: Stack, s3: S3Server, bucket: str, enrollment: str
) -> Agent:
    (workdir / "enroll").write_text(enrollment)
    (port,) = free_ports(1)
    config = {
        "node_name": NODE,
        "store_type": "s3",
        "s3_bucket": bucket,
        "s3_prefix": PREFIX,
        "s3_region": s3.region,
        "s3_endpoint_url": s3.endpoint_url,
        "state_dir": str(workdir / "agent-state"),
        "firecracker_bin": str(FIRECRACKER_BIN),
        "poll_interval": "500ms",
        "api_listen_addr": f"127.0.0.1:{port}",
        "enable_network_setup": True,
        "vm_bridge": BRIDGE,
        "vm_subnet": SUBNET,
        "vm_gateway": GATEWAY,
        "vm_start_timeout": "30s",
        "vm_stop_timeout": "20s",
        # TCG boots take seconds, longer on a loaded machine: failed checks
        # while a guest boots must not restart it (a pass ends the wait early).
        "health_grace": "120s",
        "restart_backoff_initial": "1s",
        "control_plane_url": stack.plane.url,
        "control_plane_enrollment_token_file": str(workdir / "enroll"),
        "control_plane_token_file": str(workdir / "node-token"),
        "heartbeat_interval": "2s",
    }
    config_path = workdir / "agent.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))},
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "AWS_EC2_METADATA_DISABLED": "true",
        "FCDOUBLE_BACKEND": "qemu",
        "FIREWORK_PYTHON": sys.executable,
    }
    return Agent(config_path, env, workdir / "agent.log", port)


def over_unix_socket(url: str) -> str:
    """``url`` of a PostgreSQL server, rewritten to reach it over its Unix socket.

    The scene's namespace has a loopback of its own, where the suite's server
    (on the machine's 127.0.0.1) does not listen; Unix sockets are not bound to
    a network namespace. Other URLs come back as they are.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        return url
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SHOW unix_socket_directories").fetchone()
    directories = [d.strip() for d in str(row[0] if row else "").split(",")]
    directory = next((d for d in directories if d.startswith("/")), None)
    if directory is None:
        raise SceneError(f"PostgreSQL has no Unix socket directory: {row}")
    user = parts.netloc.rpartition("@")[0]
    netloc = f"{user}@" if user else ""
    netloc += f"{quote(directory, safe='')}:{parts.port or 5432}"
    return urlunsplit(parts._replace(netloc=netloc))


@contextmanager
def scene(workdir: Path, database_base_url: str = "") -> Iterator[Scene]:
    """Start everything in a namespace of its own; yield the scene, then stop all."""
    database_base_url = over_unix_socket(database_base_url)
    guest = ensure_test_guest()
    images = workdir / "images"
    images.mkdir(parents=True)
    for name in ("web", "api"):
        shutil.copyfile(guest.rootfs, images / f"{name}.ext4")
    origin = workdir / "origin"
    commit_tree(origin, {"README.md": "the ops team's service specs\n"}, "start")
    bucket = f"e2e-{uuid.uuid4().hex[:12]}"
    with own_network_namespace(), ExitStack() as stack:
        (workdir / "weed").mkdir()
        s3, weed = start_s3_server(workdir / "weed")
        stack.callback(stop_process_group, weed)
        s3.admin.create_bucket(Bucket=bucket)
        git = stack.enter_context(GitHTTPServer({"ops.git": origin}, token=GIT_TOKEN))
        target = S3Target(
            s3.endpoint_url, s3.region, s3.access_key, s3.secret_key, bucket, PREFIX
        )
        plane = stack.enter_context(
            control_plane(
                workdir,
                clone_url=f"{git.url}/ops.git",
                git_token=GIT_TOKEN,
                s3=target,
                database_base_url=database_base_url,
            )
        )
        agent = _agent(workdir, plane, s3, bucket, _register_node(plane.env))
        stack.callback(agent.stop)
        agent.start()
        yield Scene(workdir, origin, images, guest, plane, s3, agent)
