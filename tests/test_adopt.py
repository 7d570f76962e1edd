"""Adoption after an agent restart, against real double processes and sockets."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodeagent import adopt, reconcile, vm
from nodeagent.spec import ServiceConfig
from tests.fcdouble.testing import (
    FIRECRACKER_BIN,
    alive,
    kill_group,
    live_argvs,
    wait_for,
)

BOOT_ARGS = "console=ttyS0 reboot=k panic=1 pci=off init=/sbin/fc-init"
FAST: dict[str, Any] = {"grace": 0.3, "term_grace": 0.3}


class Host:
    """A state dir with VMs started by the driver; remembers every pid to kill."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
        self.root = tmp_path
        self.state_dir = tmp_path / "state"
        self.pids: list[int] = []
        self.stopped: list[int] = []
        # Unique per test: other suites on this host may run VMs too.
        self.prefix = f"t{uuid.uuid4().hex[:6]}"
        for name in ("vmlinux", "rootfs.ext4"):
            (tmp_path / name).write_bytes(b"x")
        monkeypatch.setenv("FIREWORK_PYTHON", sys.executable)

    def name(self, short: str) -> str:
        return f"{self.prefix}-{short}"

    def service(self, short: str, vcpus: int = 1) -> ServiceConfig:
        return ServiceConfig.model_validate(
            {
                "name": self.name(short),
                "image": str(self.root / "rootfs.ext4"),
                "kernel": str(self.root / "vmlinux"),
                "vcpus": vcpus,
                "memory_mb": 128,
                "kernel_args": BOOT_ARGS,
            }
        )

    def desired_hash(self, short: str, vcpus: int = 1) -> str:
        return reconcile.spec_hash(self.service(short, vcpus), BOOT_ARGS)

    def start(self, short: str) -> vm.VMHandle:
        handle = vm.start(
            self.service(short),
            firecracker_bin=str(FIRECRACKER_BIN),
            state_dir=self.state_dir,
            boot_args=BOOT_ARGS,
        )
        self.pids.append(handle.pid)
        return handle

    def vmm_pids(self) -> list[int]:
        """Live processes started with an API socket under this state dir."""
        prefix = str(self.state_dir).encode()
        return sorted(
            pid
            for pid, argv in live_argvs()
            if any(
                a == b"--api-sock" and b.startswith(prefix)
                for a, b in itertools.pairwise(argv)
            )
        )


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Host]:
    h = Host(tmp_path, monkeypatch)
    yield h
    for pid in h.stopped:
        # A SIGSTOPped VMM cannot die of anything but SIGKILL; be sure it moves.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    for pid in {*h.pids, *h.vmm_pids()}:
        kill_group(pid)


def adopt_now(h: Host, desired: dict[str, str]) -> adopt.AdoptionReport:
    """What a freshly started agent does: a new call, nothing but the state dir."""
    return adopt.adopt(h.state_dir, desired, **FAST)


def codes(outcomes: list[adopt.Outcome]) -> dict[str, str]:
    return {o.service: o.code for o in outcomes}


def test_restart_adopts_every_running_vm_without_new_processes(host: Host) -> None:
    handles = [host.start(s) for s in ("api", "db", "web")]
    before = host.vmm_pids()
    desired = {h.service: h.spec_hash for h in handles}

    report = adopt_now(host, desired)

    assert {(r.name, r.pid) for r in report.adopted} == {
        (h.service, h.pid) for h in handles
    }
    assert all(r.alive and r.spec_hash == desired[r.name] for r in report.adopted)
    assert report.adopted[0].applied == handles[0].spec
    assert report.stopped == report.cleaned == report.failed == []
    assert host.vmm_pids() == before == sorted(h.pid for h in handles)
    # A second restart finds exactly the same.
    again = adopt_now(host, desired)
    assert {r.pid for r in again.adopted} == {h.pid for h in handles}


def test_desired_hash_matches_what_the_driver_records(host: Host) -> None:
    handle = host.start("web")
    assert host.desired_hash("web") == handle.spec_hash


def test_scan_reports_live_config_and_no_drift(host: Host) -> None:
    handle = host.start("web")
    [found] = adopt.scan(host.state_dir)
    assert (found.kind, found.code, found.pid) == ("adoptable", "ok", handle.pid)
    assert found.instance is not None and found.instance["state"] == "Running"
    assert found.config is not None
    assert found.config["machine-config"]["vcpu_count"] == 1
    assert found.drift == ()


def test_killed_vm_is_dead_and_its_record_cleaned(host: Host) -> None:
    web, db = host.start("web"), host.start("db")
    os.kill(db.pid, signal.SIGKILL)
    wait_for(lambda: not alive(db.pid), what="vmm death")

    [found_db, found_web] = adopt.scan(host.state_dir)
    assert (found_db.kind, found_db.code) == ("dead", "process_gone")
    assert found_web.kind == "adoptable"

    report = adopt_now(host, {web.service: web.spec_hash, db.service: db.spec_hash})
    assert [r.name for r in report.adopted] == [web.service]
    assert codes(report.cleaned) == {db.service: "process_gone"}
    assert not (db.vm_dir / vm.STATE_NAME).exists()
    assert not (db.vm_dir / vm.SOCKET_NAME).exists()
    assert (db.vm_dir / vm.LOG_NAME).exists()
    assert vm.inspect(db.vm_dir) is None


def test_changed_spec_is_stopped_and_others_adopted(host: Host) -> None:
    web, db = host.start("web"), host.start("db")
    desired = {web.service: web.spec_hash, db.service: host.desired_hash("db", 2)}

    report = adopt_now(host, desired)

    assert [(r.name, r.pid) for r in report.adopted] == [(web.service, web.pid)]
    assert codes(report.stopped) == {db.service: "spec_changed"}
    assert report.stopped[0].pid == db.pid
    wait_for(lambda: not alive(db.pid), what="changed vm stopped")
    assert alive(web.pid)
    assert not (db.vm_dir / vm.STATE_NAME).exists()


def test_undesired_vm_is_stopped(host: Host) -> None:
    web, old = host.start("web"), host.start("old")
    report = adopt_now(host, {web.service: web.spec_hash})
    assert [r.name for r in report.adopted] == [web.service]
    assert codes(report.stopped) == {old.service: "not_desired"}
    wait_for(lambda: not alive(old.pid), what="undesired vm stopped")
    assert host.vmm_pids() == [web.pid]


def test_reused_pid_is_foreign_and_never_signalled(host: Host) -> None:
    sleeper = subprocess.Popen(["sleep", "30"], start_new_session=True)
    host.pids.append(sleeper.pid)
    name = host.name("web")
    vm_dir = host.state_dir / "vms" / name
    vm_dir.mkdir(parents=True)
    stat = Path(f"/proc/{sleeper.pid}/stat").read_text()
    state = {
        "service": name,
        "pid": sleeper.pid,
        "starttime": int(stat.rsplit(")", 1)[1].split()[19]),
        "socket": str(vm_dir / vm.SOCKET_NAME),
        "spec": {},
        "spec_hash": "h",
        "api": {},
    }
    (vm_dir / vm.STATE_NAME).write_text(json.dumps(state))

    [found] = adopt.scan(host.state_dir)
    assert (found.kind, found.code, found.pid) == ("foreign", "pid_reused", sleeper.pid)

    report = adopt_now(host, {name: "h"})
    assert report.adopted == []
    assert report.stopped == []
    assert codes(report.cleaned) == {name: "pid_reused"}
    assert sleeper.poll() is None
    assert not (vm_dir / vm.STATE_NAME).exists()


def test_hung_vm_is_unresponsive_and_stopped(host: Host) -> None:
    web, hung = host.start("web"), host.start("hung")
    os.kill(hung.pid, signal.SIGSTOP)
    host.stopped.append(hung.pid)

    found = {f.service: f for f in adopt.scan(host.state_dir, api_timeout=0.3)}
    assert (found[hung.service].kind, found[hung.service].code) == (
        "unresponsive",
        "api_timeout",
    )

    desired = {web.service: web.spec_hash, hung.service: hung.spec_hash}
    report = adopt.adopt(host.state_dir, desired, api_timeout=0.3, **FAST)
    assert [r.name for r in report.adopted] == [web.service]
    assert codes(report.stopped) == {hung.service: "api_timeout"}
    wait_for(lambda: not alive(hung.pid), what="hung vm killed")
    assert host.vmm_pids() == [web.pid]


@pytest.mark.parametrize(
    ("content", "code"),
    [("{not json", "bad_state"), ('{"pid": "x"}', "bad_state"), (None, "no_state")],
)
def test_unreadable_record_is_broken_and_cleaned(
    host: Host, content: str | None, code: str
) -> None:
    vm_dir = host.state_dir / "vms" / host.name("web")
    vm_dir.mkdir(parents=True)
    (vm_dir / vm.LOG_NAME).write_text("old log\n")
    if content is not None:
        (vm_dir / vm.STATE_NAME).write_text(content)

    [found] = adopt.scan(host.state_dir)
    assert (found.kind, found.code) == ("broken", code)

    report = adopt_now(host, {})
    assert codes(report.cleaned) == {vm_dir.name: code}
    assert not (vm_dir / vm.STATE_NAME).exists()
    assert (vm_dir / vm.LOG_NAME).read_text() == "old log\n"


def test_stray_socket_is_broken_and_removed(host: Host) -> None:
    vm_dir = host.state_dir / "vms" / host.name("web")
    vm_dir.mkdir(parents=True)
    # A socket file nobody listens on, as a crashed Firecracker leaves behind.
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(vm_dir / vm.SOCKET_NAME))
    [found] = adopt.scan(host.state_dir)
    assert (found.kind, found.code) == ("broken", "stray_socket")
    adopt_now(host, {})
    assert not (vm_dir / vm.SOCKET_NAME).exists()


def test_live_vmm_without_record_is_left_alone(host: Host) -> None:
    web = host.start("web")
    (web.vm_dir / vm.STATE_NAME).unlink()
    report = adopt_now(host, {web.service: web.spec_hash})
    assert codes(report.left) == {web.service: "unrecorded_vmm"}
    assert alive(web.pid)
    assert (web.vm_dir / vm.SOCKET_NAME).exists()


def test_odd_entries_never_raise(host: Host) -> None:
    vms = host.state_dir / "vms"
    (vms / "Not_A_Name").mkdir(parents=True)
    (vms / "stray-file").write_text("x")
    found = adopt.scan(host.state_dir)
    assert [(f.service, f.kind, f.code) for f in found] == [
        ("Not_A_Name", "broken", "bad_name")
    ]
    assert adopt.scan(host.root / "missing") == []


def test_socket_served_by_another_process_is_not_adopted(host: Host) -> None:
    web = host.start("web")
    sock_path = web.vm_dir / vm.SOCKET_NAME
    sock_path.unlink()
    with socket.socket(socket.AF_UNIX) as impostor:
        impostor.bind(str(sock_path))
        impostor.listen()
        [found] = adopt.scan(host.state_dir, api_timeout=0.2)
    assert (found.kind, found.code) == ("unresponsive", "socket_not_ours")


def test_live_config_drift_from_record_is_stopped(host: Host) -> None:
    web = host.start("web")
    path = web.vm_dir / vm.STATE_NAME
    state = json.loads(path.read_text())
    state["api"]["machine-config"]["vcpu_count"] = 4
    path.write_text(json.dumps(state))

    [found] = adopt.scan(host.state_dir)
    assert found.drift == ("machine-config",)
    report = adopt_now(host, {web.service: web.spec_hash})
    assert codes(report.stopped) == {web.service: "config_drift"}
    wait_for(lambda: not alive(web.pid), what="drifted vm stopped")
