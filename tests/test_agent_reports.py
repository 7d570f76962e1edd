"""A real agent process enrolls with a running control plane and reports to it.

The control plane is Django's live server (a real HTTP server on 127.0.0.1 with
the test database); the agent runs as its own process with a local store and
Firecracker doubles. Nothing is stubbed between the two.
"""

from __future__ import annotations

import os
import signal
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controlplane.models import Node as NodeRecord
from controlplane.models import NodeTransition
from controlplane.nodetokens import issue_enrollment_token
from tests.agentsupport import Node
from tests.fcdouble.testing import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path)
    yield n
    n.cleanup()


def report_of(name: str) -> dict[str, Any]:
    record = NodeRecord.objects.get(name=name)
    return record.last_report or {}


def services_of(name: str) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in report_of(name).get("services", [])}


def test_agent_enrolls_reports_and_a_killed_vm_shows_restarting_then_running(
    node: Node, live_server: Any, admin_client: Any
) -> None:
    record = NodeRecord.objects.create(name=node.label, labels=[node.label])
    enrollment, _ = issue_enrollment_token(record)
    (node.root / "enroll").write_text(enrollment)
    web = node.name("web")
    node.publish([node.service("web")])
    node.write_config(
        control_plane_url=live_server.url,
        control_plane_enrollment_token_file=str(node.root / "enroll"),
        control_plane_token_file=str(node.root / "secrets" / "token"),
        heartbeat_interval="30s",  # reports come from changes and ticks
    )
    agent = node.start_agent()
    pid = agent.wait_running([web])[web]

    # Reports also go out mid-tick, as services change; the revisions applied
    # by the first tick come with the report after it.
    wait_for(
        lambda: (
            services_of(node.label).get(web, {}).get("state") == "running"
            and bool(report_of(node.label).get("revisions"))
        ),
        timeout=20,
        what=f"first report after a tick\n{agent.tail()}",
    )
    token_file = node.root / "secrets" / "token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token_file.read_text().startswith("fwn_")
    first = report_of(node.label)
    assert services_of(node.label)[web]["pid"] == pid
    assert first["revisions"] == {node.label: first["last_revision"]}
    record.refresh_from_db()
    assert record.last_seen_at is not None
    assert record.agent_version
    page = admin_client.get(f"/hosts/{node.label}/").content.decode()
    assert web in page and "running" in page and str(pid) in page

    os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: (
            services_of(node.label)[web]["pid"] not in (0, pid)
            and services_of(node.label)[web]["state"] == "running"
        ),
        timeout=20,
        what=f"restart reported\n{agent.tail()}",
    )
    assert services_of(node.label)[web]["restarts"] == 1
    new_pid = services_of(node.label)[web]["pid"]
    # The moment it was restarting reached the control plane as it happened
    # (the agent reports state changes at once, not only after its tick).
    changes = [
        (t.old_value, t.new_value)
        for t in NodeTransition.objects.filter(service=web, field="state").order_by(
            "id"
        )
    ]
    assert changes[-2:] == [("running", "starting"), ("starting", "running")]
    page = admin_client.get(f"/hosts/{node.label}/").content.decode()
    assert str(new_pid) in page and str(pid) not in page
    assert "<td>starting</td>" in page  # in the recent transitions
