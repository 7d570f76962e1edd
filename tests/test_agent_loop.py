"""The agent loop in process: a local store, the real driver, Firecracker doubles."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodeagent import vm
from nodeagent.agent import Agent
from nodeagent.config import parse_agent_config
from nodeagent.httpapi import status_document
from tests.agentsupport import Node
from tests.conftest import S3Bucket
from tests.fcdouble.testing import JAILER_BIN, alive, read_log, wait_for


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Node]:
    n = Node(tmp_path)
    monkeypatch.setenv("FCDOUBLE_LOG", str(tmp_path / "requests.jsonl"))
    yield n
    n.cleanup()


def agent_for(node: Node, **overrides: Any) -> Agent:
    config, _ = parse_agent_config(node.config(**overrides))
    return Agent(config)


def states(agent: Agent) -> dict[str, tuple[str, int | None]]:
    return {s.name: (s.state, s.pid) for s in agent.status.snapshot().services}


def kinds(report: Any) -> list[tuple[str, str]]:
    return [(r.action.kind, r.action.service) for r in report.results]


def test_first_tick_creates_every_service_and_the_next_does_nothing(
    node: Node,
) -> None:
    web, db = node.name("web"), node.name("db")
    node.publish([node.service("web"), node.service("db")])
    agent = agent_for(node)
    report = agent.tick()
    assert report.ok
    assert sorted(kinds(report)) == [("create", db), ("create", web)]
    pids = node.vmm_pids()
    assert states(agent) == {db: ("running", pids[db]), web: ("running", pids[web])}
    again = agent.tick()
    assert again.ok and again.results == ()
    assert node.vmm_pids() == pids


def test_vms_get_the_resolved_network_and_kernel_command_line(
    node: Node, tmp_path: Path
) -> None:
    node.publish(
        [
            node.service(
                "web", links=[{"service": node.name("db"), "env": "DB", "port": 5432}]
            ),
            node.service("db", env={"GREETING": "hello world"}),
        ]
    )
    assert agent_for(node).tick().ok
    puts = [
        (e["path"], e["body"])
        for e in read_log(tmp_path / "requests.jsonl")
        if e["method"] == "PUT"
    ]
    boots = [body["boot_args"] for path, body in puts if path == "/boot-source"]
    db_boot = next(b for b in boots if "GREETING" in b)
    web_boot = next(b for b in boots if "firework.env.DB=" in b)
    # db sorts first, so it gets .2 and web .3; the link carries db's address.
    assert "ip=172.31.0.2::172.31.0.1:255.255.255.0::eth0:off" in db_boot
    assert "firework.env64.GREETING=aGVsbG8gd29ybGQ" in db_boot
    assert "firework.env.DB=http://172.31.0.2:5432" in web_boot
    ifaces = [body for path, body in puts if path.startswith("/network-interfaces")]
    assert sorted(i["guest_mac"] for i in ifaces) == [
        "AA:FC:AC:1F:00:02",
        "AA:FC:AC:1F:00:03",
    ]


def test_only_the_changed_service_is_recreated(node: Node) -> None:
    web, db = node.name("web"), node.name("db")
    node.publish([node.service("web"), node.service("db")])
    agent = agent_for(node)
    agent.tick()
    before = node.vmm_pids()
    node.publish([node.service("web", vcpus=2), node.service("db")])
    report = agent.tick()
    assert [
        (r.action.kind, r.action.service, r.action.reason) for r in report.results
    ] == [("recreate", web, "vcpus changed")]
    after = node.vmm_pids()
    assert after[db] == before[db]
    assert after[web] != before[web]
    assert not alive(before[web])


def test_health_check_and_metadata_changes_keep_the_vm(node: Node) -> None:
    web = node.name("web")
    node.publish([node.service("web")])
    agent = agent_for(node)
    agent.tick()
    before = node.vmm_pids()
    node.publish(
        [
            node.service(
                "web",
                health_check={"type": "tcp", "port": 80},
                metadata={"team": "core"},
            )
        ]
    )
    report = agent.tick()
    assert report.results == ()
    assert node.vmm_pids() == before
    assert agent._monitored[web]["metadata"] == {"team": "core"}


def test_a_dead_vmm_is_recreated_on_the_next_tick_without_a_new_revision(
    node: Node,
) -> None:
    web = node.name("web")
    node.publish([node.service("web")])
    agent = agent_for(node)
    agent.tick()
    old = node.vmm_pids()[web]
    os.kill(old, signal.SIGKILL)
    # A multi-threaded process can show as a zombie before waitpid may reap it:
    # wait until the exit is visible the way the agent looks at it.
    handle = agent._vms[web]
    wait_for(lambda: not vm.is_running(handle), what="vmm death")
    report = agent.tick()
    assert [(r.action.kind, r.action.reason) for r in report.results] == [
        ("recreate", "not running")
    ]
    new = node.vmm_pids()[web]
    assert new != old
    [status] = agent.status.snapshot().services
    assert (status.state, status.pid, status.restarts) == ("running", new, 1)


def test_removed_service_is_stopped_and_forgotten(node: Node) -> None:
    # "zdb" sorts after "web", so removing it moves no other guest's address.
    web, db = node.name("web"), node.name("zdb")
    node.publish([node.service("web"), node.service("zdb")])
    agent = agent_for(node)
    agent.tick()
    pids_before = node.vmm_pids()
    pid = pids_before[db]
    node.publish([node.service("web")])
    report = agent.tick()
    assert kinds(report) == [("remove", db)]
    assert node.vmm_pids()[web] == pids_before[web]
    wait_for(lambda: not alive(pid), what="removed vmm gone")
    assert set(states(agent)) == {web}
    assert not (node.state_dir / "vms" / db / "state.json").exists()


def test_invalid_config_keeps_every_vm_and_reports_stale(node: Node) -> None:
    node.publish([node.service("web")])
    agent = agent_for(node)
    agent.tick()
    before = node.vmm_pids()
    node.publish([node.service("web", vcpus=0)])
    report = agent.tick()
    assert report.stale and report.results == ()
    assert node.vmm_pids() == before
    snap = agent.status.snapshot()
    assert snap.stale
    assert snap.stale_reason.startswith("config_invalid: ")
    assert f"service {node.name('web')}" in snap.stale_reason
    assert "vcpus" in snap.stale_reason
    node.publish([node.service("web")])
    assert not agent.tick().stale
    assert not agent.status.snapshot().stale


def test_services_that_do_not_fit_fail_alone(node: Node) -> None:
    # A /29 holds 6 hosts: the gateway and 5 guests.
    shorts = [f"s{i}" for i in range(6)]
    node.publish([node.service(s) for s in shorts])
    agent = agent_for(node, vm_subnet="172.31.0.0/29", vm_gateway="172.31.0.1")
    report = agent.tick()
    assert not report.ok
    last = node.name("s5")
    assert list(report.failed) == [last]
    assert "no free address in 172.31.0.0/29" in report.failed[last]
    got = states(agent)
    assert got[last] == ("failed", None)
    assert all(got[node.name(s)][0] == "running" for s in shorts[:5])
    assert last not in node.vmm_pids()


def test_two_services_on_one_image_start_only_the_first(node: Node) -> None:
    """Two guests writing one ext4 image would corrupt it."""
    web, copy = node.name("web"), node.name("zcopy")
    node.publish([node.service("web"), node.service("zcopy")])
    agent = agent_for(node)
    assert agent.tick().ok
    before = node.vmm_pids()
    shared = node.service("web")["image"]

    node.publish([node.service("web"), node.service("zcopy", image=shared)])
    report = agent.tick()

    assert list(report.failed) == [copy]
    assert report.failed[copy] == (
        f"image {shared} is already the root drive of service {web}: two VMs"
        " writing one image corrupt it, give each service an image of its own"
    )
    # The VM the service already runs is kept; nothing is started on the image.
    assert node.vmm_pids() == before


def test_a_start_failure_reaches_the_status_verbatim(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FCDOUBLE_FAIL", "InstanceStart:Cannot start microvm: boom")
    node.publish([node.service("web")])
    agent = agent_for(node)
    report = agent.tick()
    assert not report.ok
    [status] = agent.status.snapshot().services
    assert status.state == "failed"
    assert status.last_error.endswith("Cannot start microvm: boom")
    assert node.vmm_pids() == {}


def test_a_new_agent_adopts_running_vms_without_restarting_them(node: Node) -> None:
    node.publish([node.service("web"), node.service("db")])
    first = agent_for(node)
    first.tick()
    first.shutdown()
    before = node.vmm_pids()
    second = agent_for(node)
    report = second.tick()
    assert report.ok and report.results == ()
    assert node.vmm_pids() == before
    assert {n: s for n, (s, _) in states(second).items()} == dict.fromkeys(
        before, "running"
    )


def test_adoption_recreates_a_vm_whose_spec_changed_while_the_agent_was_down(
    node: Node,
) -> None:
    web, db = node.name("web"), node.name("db")
    node.publish([node.service("web"), node.service("db")])
    agent_for(node).tick()
    before = node.vmm_pids()
    node.publish([node.service("web", memory_mb=256), node.service("db")])
    report = agent_for(node).tick()
    assert kinds(report) == [("create", web)]
    after = node.vmm_pids()
    assert after[db] == before[db] and after[web] != before[web]


def test_shutdown_with_stop_vms_stops_everything(node: Node) -> None:
    node.publish([node.service("web"), node.service("db")])
    agent = agent_for(node)
    agent.tick()
    pids = list(node.vmm_pids().values())
    agent.shutdown(stop_vms=True)
    wait_for(lambda: not any(alive(p) for p in pids), what="vmms stopped")
    assert agent.status.snapshot().phase == "stopping"


def test_run_loop_ticks_until_stopped_and_leaves_vms(node: Node) -> None:
    node.publish([node.service("web")])
    agent = agent_for(node, poll_interval="50ms")
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,))
    thread.start()
    wait_for(lambda: agent.status.snapshot().ticks.count >= 3, what="three ticks")
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    agent.shutdown()
    assert len(node.vmm_pids()) == 1
    document = status_document(agent.status.snapshot())
    assert document["phase"] == "stopping"
    assert document["services"][0]["state"] == "running"


def test_a_missing_firecracker_binary_fails_the_services_clearly(node: Node) -> None:
    node.publish([node.service("web")])
    agent = agent_for(node, firecracker_bin=str(node.root / "no-firecracker"))
    report = agent.tick()
    assert not report.ok
    [status] = agent.status.snapshot().services
    assert status.state == "failed"
    assert status.last_error == (
        f"service {node.name('web')}: cannot run {node.root}/no-firecracker: "
        "No such file or directory"
    )


def test_jailed_vms_run_and_are_adopted_through_the_agent(node: Node) -> None:
    # A short base: the host socket path must fit in 107 bytes.
    base = Path(tempfile.mkdtemp(prefix="fwj-", dir="/tmp"))
    node.cleanups.append(lambda: shutil.rmtree(base, ignore_errors=True))
    jailed = {
        "jailer_bin": str(JAILER_BIN),
        "jailer_chroot_base": str(base),
        "jailer_uid": 4242,
        "jailer_gid": 4242,
    }
    web = node.name("web")
    node.publish([node.service("web")])
    first = agent_for(node, **jailed)
    assert first.tick().ok
    [(_, pid)] = states(first).values()
    root = base / "firecracker" / web / "root"
    assert (root / "run" / "firecracker.socket").is_socket()
    assert (root / "web-rootfs.ext4").stat().st_ino == (
        node.images / "web-rootfs.ext4"
    ).stat().st_ino
    first.shutdown()

    second = agent_for(node, **jailed)
    report = second.tick()
    assert report.ok and report.results == ()
    assert states(second) == {web: ("running", pid)}
    node.publish([])
    assert kinds(second.tick()) == [("remove", web)]
    assert not (base / "firecracker" / web).exists()


def test_a_running_vm_of_a_service_that_cannot_resolve_is_kept(node: Node) -> None:
    web, big = node.name("web"), node.name("zbig")
    node.publish([node.service("web")])
    agent_for(node, vm_subnet="172.31.0.0/30").tick()
    before = node.vmm_pids()
    # zbig does not fit in a /30; web keeps its address and keeps running.
    node.publish([node.service("web"), node.service("zbig")])
    fresh = agent_for(node, vm_subnet="172.31.0.0/30")
    report = fresh.tick()
    assert list(report.failed) == [big]
    assert node.vmm_pids() == before
    assert states(fresh)[web] == ("running", before[web])


def test_images_are_synced_before_start_and_a_missing_one_fails_its_service(
    node: Node, s3_bucket: S3Bucket
) -> None:
    server = s3_bucket.server
    services = [
        node.service("web"),
        node.service("zbad", image=str(node.images / "missing.ext4")),
    ]
    for name in ("vmlinux", "web-rootfs.ext4"):
        path = node.images / name
        server.admin.put_object(
            Bucket=s3_bucket.name, Key=name, Body=b"image " + name.encode()
        )
        path.unlink()
    (node.root / "ak").write_text(server.access_key)
    (node.root / "sk").write_text(server.secret_key)
    web, bad = node.name("web"), node.name("zbad")
    node.publish(services)
    agent = agent_for(
        node,
        s3_images_bucket=s3_bucket.name,
        images_dir=str(node.images),
        s3_endpoint_url=server.endpoint_url,
        s3_access_key_file=str(node.root / "ak"),
        s3_secret_key_file=str(node.root / "sk"),
    )
    report = agent.tick()
    assert not report.ok
    got = {s.name: s for s in agent.status.snapshot().services}
    assert got[web].state == "running"
    assert (node.images / "web-rootfs.ext4").read_bytes() == b"image web-rootfs.ext4"
    assert (node.images / "vmlinux").read_bytes() == b"image vmlinux"
    assert got[bad].state == "failed"
    assert "missing.ext4" in got[bad].last_error
    assert "not in bucket" in got[bad].last_error
    assert list(node.vmm_pids()) == [web]


def test_a_failed_service_removed_from_the_config_leaves_the_status(
    node: Node,
) -> None:
    web, bad = node.name("web"), node.name("zbad")
    node.publish(
        [node.service("web"), node.service("zbad", kernel=str(node.root / "nope"))]
    )
    agent = agent_for(node)
    agent.tick()
    assert states(agent)[bad][0] == "failed"
    node.publish([node.service("web")])
    agent.tick()
    assert set(states(agent)) == {web}
