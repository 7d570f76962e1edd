"""Repositories, revisions and users for the dashboard tests, made with the ORM.

Revisions are written directly, as the Celery task would leave them, so no task
runs; times are set explicitly because ``queued_at`` is filled in on insert.
"""

from __future__ import annotations

import hashlib
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.models import Group, User
from django.utils import timezone

from controlplane.models import ConfigRepository, NodeConfigOutput, Revision
from tests.celerysupport import TaskQueue, celery_enqueues_only

PASSWORD = "correct-horse-battery"
SHA_A = "a" * 40
SHA_B = "b" * 40
SHA_C = "c" * 40

GENERAL_V1 = textwrap.dedent(
    """\
    node: general-purpose
    services:
      - name: web
        image: /var/lib/images/web-rootfs.ext4
        kernel: /var/lib/kernels/vmlinux
        vcpus: 2
        memory_mb: 512
        kernel_args: console=ttyS0
        network:
          interface: fw-web
          guest_ip: 172.16.0.2
    """
)
GENERAL_V2 = GENERAL_V1.replace("memory_mb: 512", "memory_mb: 1024")
COMPUTE = textwrap.dedent(
    """\
    node: compute
    services:
      - name: report-worker
        image: /var/lib/images/report-worker-rootfs.ext4
        kernel: /var/lib/kernels/vmlinux
        vcpus: 4
        memory_mb: 2048
        kernel_args: console=ttyS0
    """
)
EDGE = textwrap.dedent(
    """\
    node: edge
    services:
      - name: proxy
        image: /var/lib/images/proxy-rootfs.ext4
        kernel: /var/lib/kernels/vmlinux
        vcpus: 1
        memory_mb: 256
        kernel_args: console=ttyS0
    """
)
# Two services, one with a TAP and guest IP: what the API and node pages list.
GENERAL_PAIR = GENERAL_V1 + (
    "  - name: api\n"
    "    image: /var/lib/images/api-rootfs.ext4\n"
    "    kernel: /var/lib/kernels/vmlinux\n"
    "    vcpus: 1\n"
    "    memory_mb: 384\n"
    "    kernel_args: console=ttyS0\n"
)
# Every field the node types page shows: TAP, guest IP, health checks, links.
WIRED = textwrap.dedent(
    """\
    node: general-purpose
    services:
      - name: web
        image: /var/lib/images/web-rootfs.ext4
        kernel: /var/lib/kernels/vmlinux
        vcpus: 2
        memory_mb: 512
        kernel_args: console=ttyS0
        network:
          interface: fw-web
          guest_ip: 172.16.0.2
        port_forwards:
          - host_port: 8080
            vm_port: 80
        health_check:
          type: http
          port: 80
          path: /healthz
        links:
          - service: api
            env: API_URL
            port: 9000
      - name: api
        image: /var/lib/images/api-rootfs.ext4
        kernel: /var/lib/kernels/vmlinux
        vcpus: 1
        memory_mb: 384
        kernel_args: console=ttyS0
        network: true
        health_check:
          type: tcp
          port: 9000
    """
)

# Out of order on purpose: the page must group and sort them.
ERRORS = [
    {"file": "services/web.yaml", "service": "web", "message": "missing image"},
    {"file": "services/api.yaml", "service": "api", "message": "vcpus: must be >= 1"},
    {"file": "services/web.yaml", "service": "web", "message": "memory_mb: too big"},
    {"file": "defaults.yaml", "service": "", "message": "invalid YAML (line 2)"},
    {"file": "services/web.yaml", "service": "cache", "message": "duplicate TAP"},
]
WARNINGS = [
    {"file": "services/api.yaml", "service": "api", "message": "unknown field colour"}
]


def make_user(name: str, *, staff: bool = False, operator: bool = False) -> User:
    """A user who logs in with ``PASSWORD``; ``operator`` puts them in the group."""
    user = User.objects.create_user(name, password=PASSWORD, is_staff=staff)
    if operator:
        group, _ = Group.objects.get_or_create(name="operators")
        user.groups.add(group)
    return user


def make_repository(name: str = "ops-config", **fields: object) -> ConfigRepository:
    """A registered config repository; ``fields`` override the defaults."""
    values: dict[str, object] = {
        "clone_url": f"https://git.example.test/acme/{name}.git",
        "branch": "main",
        "config_subdir": "firework",
        "webhook_secret_env": "FIREWORK_OPS_WEBHOOK_SECRET",
        "access_token_env": "FIREWORK_OPS_TOKEN",
    }
    return ConfigRepository.objects.create(name=name, **(values | fields))


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def make_revision(
    repository: ConfigRepository,
    status: str,
    *,
    sha: str = SHA_A,
    queued: datetime | None = None,
    took: timedelta | None = timedelta(seconds=1, milliseconds=250),
    outputs: dict[str, str] | None = None,
    trigger: str = Revision.Trigger.WEBHOOK,
    **fields: object,
) -> Revision:
    """A revision as a finished run leaves it, with one output per node type."""
    queued = queued or timezone.now() - timedelta(minutes=5)
    finished = status in Revision.FINISHED and took is not None
    revision = Revision.objects.create(
        repository=repository,
        ref=repository.branch,
        commit_sha=sha,
        trigger=trigger,
        status=status,
        started_at=queued + timedelta(seconds=1) if finished else None,
        finished_at=queued + timedelta(seconds=1) + took if finished and took else None,
        published=status == Revision.Status.SUCCEEDED,
        **fields,
    )
    Revision.objects.filter(pk=revision.pk).update(queued_at=queued)
    for node_type, content in (outputs or {}).items():
        NodeConfigOutput.objects.create(
            revision=revision,
            node_type=node_type,
            content=content,
            sha256=sha256(content),
            object_key=f"nodes/{node_type}.yaml",
            etag=f'"{sha256(content)[:32]}"',
            services=[
                line.split(":", 1)[1].strip()
                for line in content.splitlines()
                if line.strip().startswith("- name:")
            ],
        )
    revision.refresh_from_db()
    return revision


@contextmanager
def tasks_queued_not_run() -> Iterator[TaskQueue]:
    """Scheduled tasks go to the in-memory broker and no worker ever runs them.

    A run of a test repository would try to clone it from the network.
    """
    with celery_enqueues_only() as queue:
        yield queue


def queued_tasks() -> list[tuple[str, list[Any]]]:
    """Name and arguments of every task message waiting on the default queue."""
    return [(task.name, task.args) for task in TaskQueue().drain()]
