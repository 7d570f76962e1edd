"""The Firecracker driver against the double: real processes, real Unix sockets."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodeagent import reconcile, vm
from nodeagent.firecracker import FirecrackerClient
from nodeagent.spec import ServiceConfig
from tests.fcdouble.testing import (
    FIRECRACKER_BIN,
    alive,
    children,
    kill_group,
    pids_with_id,
    read_log,
    wait_for,
)
from tests.taps import add_taps, remove_taps

BOOT_ARGS = "console=ttyS0 reboot=k panic=1 pci=off init=/sbin/fc-init"
MAC = "06:00:AC:10:00:02"


class Host:
    """A state dir, image files and the double's knobs for one test."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
        self.root = tmp_path
        self.state_dir = tmp_path / "state"
        self.log = tmp_path / "requests.jsonl"
        self.monkeypatch = monkeypatch
        self.pids: list[int] = []
        # Unique per test: other suites on this host may run VMs named "web".
        self.name = f"web-{uuid.uuid4().hex[:8]}"
        # The TAP an operator made (the driver refuses a missing one).
        self.tap = f"fw-{uuid.uuid4().hex[:8]}"
        self.vm_dir = self.state_dir / "vms" / self.name
        for name in ("vmlinux", "initrd.img", "web.ext4"):
            (tmp_path / name).write_bytes(b"x")
        monkeypatch.setenv("FIREWORK_PYTHON", sys.executable)
        monkeypatch.setenv("FCDOUBLE_LOG", str(self.log))

    def service(self, **fields: Any) -> ServiceConfig:
        data = {
            "name": self.name,
            "image": str(self.root / "web.ext4"),
            "kernel": str(self.root / "vmlinux"),
            "vcpus": 2,
            "memory_mb": 256,
            "kernel_args": BOOT_ARGS,
            **fields,
        }
        return ServiceConfig.model_validate(data)

    def start(self, service: ServiceConfig | None = None, **kw: Any) -> vm.VMHandle:
        network = {"interface": self.tap, "guest_mac": MAC}
        handle = vm.start(
            service or self.service(network=network),
            firecracker_bin=str(FIRECRACKER_BIN),
            state_dir=self.state_dir,
            boot_args=BOOT_ARGS,
            **kw,
        )
        self.pids.append(handle.pid)
        return handle

    def calls(self) -> list[tuple[str, str, Any]]:
        """Configuration calls (readiness GETs left out)."""
        return [
            (e["method"], e["path"], e["body"])
            for e in read_log(self.log)
            if e["method"] != "GET"
        ]


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Host]:
    h = Host(tmp_path, monkeypatch)
    add_taps([h.tap])
    yield h
    for pid in h.pids:
        kill_group(pid)
    for pid in pids_with_id(h.name):
        kill_group(pid)
    remove_taps([h.tap])


def test_start_configures_in_firecracker_order(host: Host) -> None:
    network = {"interface": host.tap, "guest_mac": MAC}
    handle = host.start(
        host.service(initrd=str(host.root / "initrd.img"), network=network)
    )
    root = str(host.root)
    assert host.calls() == [
        (
            "PUT",
            "/machine-config",
            {"vcpu_count": 2, "mem_size_mib": 256, "smt": False},
        ),
        (
            "PUT",
            "/boot-source",
            {
                "kernel_image_path": f"{root}/vmlinux",
                "boot_args": BOOT_ARGS,
                "initrd_path": f"{root}/initrd.img",
            },
        ),
        (
            "PUT",
            "/drives/rootfs",
            {
                "drive_id": "rootfs",
                "path_on_host": f"{root}/web.ext4",
                "is_root_device": True,
                "is_read_only": False,
            },
        ),
        (
            "PUT",
            "/network-interfaces/eth0",
            {"iface_id": "eth0", "host_dev_name": host.tap, "guest_mac": MAC},
        ),
        ("PUT", "/actions", {"action_type": "InstanceStart"}),
    ]
    assert all(e["status"] in (200, 204) for e in read_log(host.log))
    info = FirecrackerClient(handle.socket).instance_info()
    assert info["state"] == "Running"
    assert info["id"] == host.name


def test_start_records_state_atomically(host: Host) -> None:
    handle = host.start()
    vm_dir = host.vm_dir
    assert stat.S_IMODE(vm_dir.stat().st_mode) == 0o700
    state = json.loads((vm_dir / "state.json").read_text())
    assert state["pid"] == handle.pid
    assert state["socket"] == str(vm_dir / "firecracker.sock")
    assert state["spec"] == handle.spec
    assert state["spec"]["boot_args"] == BOOT_ARGS
    assert state["spec"]["network"]["guest_mac"] == MAC
    assert state["spec_hash"] == reconcile.hash_spec(handle.spec)
    assert state["spec_hash"] == reconcile.spec_hash(
        host.service(network={"interface": host.tap, "guest_mac": MAC}), BOOT_ARGS
    )
    assert state["api"]["network-interfaces"][0]["host_dev_name"] == host.tap
    proc_stat = Path(f"/proc/{handle.pid}/stat").read_text()
    assert state["starttime"] == int(proc_stat.rsplit(")", 1)[1].split()[19])
    assert not list(vm_dir.glob("*.tmp"))


def test_vmm_runs_in_its_own_session(host: Host) -> None:
    handle = host.start()
    assert os.getsid(handle.pid) == handle.pid
    assert os.getsid(handle.pid) != os.getsid(0)


def test_without_network_no_interface_is_configured(host: Host) -> None:
    host.start(host.service())
    paths = [path for _, path, _ in host.calls()]
    assert paths == ["/machine-config", "/boot-source", "/drives/rootfs", "/actions"]


def test_a_missing_tap_is_refused_before_firecracker_runs(host: Host) -> None:
    """As root, Firecracker would make the TAP itself: down, bridgeless, useless."""
    remove_taps([host.tap])
    network = {"interface": host.tap, "guest_mac": MAC}

    with pytest.raises(vm.VMError) as failure:
        host.start(host.service(network=network))

    assert str(failure.value) == (
        f"service {host.name}: network.interface {host.tap} does not exist on this"
        " node (the agent creates it only with enable_network_setup)"
    )
    assert host.calls() == []
    assert not pids_with_id(host.name)
    assert not host.vm_dir.exists()


@pytest.mark.parametrize(
    ("fail", "message"),
    [
        ("drives", "Drive config error: A root block device already exists!"),
        ("InstanceStart", "Start microvm error: Cannot start microvm: boom"),
    ],
)
def test_api_error_reaches_vmerror_verbatim_and_cleans_up(
    host: Host, fail: str, message: str
) -> None:
    host.monkeypatch.setenv("FCDOUBLE_FAIL", f"{fail}:{message}")
    with pytest.raises(vm.VMError) as info:
        host.start()
    assert str(info.value) == f"service {host.name}: {message}"
    assert pids_with_id(host.name) == []
    assert not (host.vm_dir).exists()


def test_missing_kernel_message_is_firecrackers(host: Host) -> None:
    service = host.service(kernel=str(host.root / "no-such-kernel"))
    with pytest.raises(vm.VMError, match="The kernel file cannot be opened") as info:
        host.start(service)
    assert str(info.value).endswith(
        "Boot source error: The kernel file cannot be opened: No such file or"
        " directory (os error 2)"
    )
    assert pids_with_id(host.name) == []


def test_vmm_exiting_early_fails_at_once(host: Host) -> None:
    host.monkeypatch.setenv("FCDOUBLE_EXIT", "1")
    began = time.monotonic()
    with pytest.raises(vm.VMError, match="firecracker exited with 1"):
        host.start(socket_timeout=10)
    assert time.monotonic() - began < 5
    assert not (host.vm_dir).exists()


def test_stale_socket_file_is_removed_before_start(host: Host) -> None:
    vm_dir = host.vm_dir
    vm_dir.mkdir(parents=True)
    (vm_dir / "firecracker.sock").write_text("")
    handle = host.start()
    assert alive(handle.pid)


def test_stop_uses_ctrl_alt_del(host: Host) -> None:
    handle = host.start()
    vm.stop(handle, grace=5)
    assert handle.process is not None
    assert handle.process.returncode == 0
    assert host.calls()[-1] == ("PUT", "/actions", {"action_type": "SendCtrlAltDel"})
    assert vm.inspect(handle.vm_dir) is None


def test_stop_escalates_to_sigterm_when_guest_ignores_cad(host: Host) -> None:
    host.monkeypatch.setenv("FCDOUBLE_GUEST", "ignore-cad")
    handle = host.start()
    vm.stop(handle, grace=0.3, term_grace=2)
    assert handle.process is not None
    assert handle.process.returncode == -signal.SIGTERM


def test_stop_of_hung_vm_escalates_to_sigkill(host: Host) -> None:
    host.monkeypatch.setenv("FCDOUBLE_GUEST", "ignore-cad")
    host.monkeypatch.setenv("FCDOUBLE_IGNORE_SIGTERM", "1")
    handle = host.start()
    [guest] = children(handle.pid)
    began = time.monotonic()
    vm.stop(handle, grace=0.3, term_grace=0.3)
    assert time.monotonic() - began < 4
    assert handle.process is not None
    assert handle.process.returncode == -signal.SIGKILL
    wait_for(lambda: not alive(guest), what="guest death")


def test_stop_by_state_dir_works_without_a_handle(host: Host) -> None:
    handle = host.start()
    vm.stop(handle.vm_dir, grace=5)
    wait_for(lambda: not alive(handle.pid), what="vmm exit")
    assert not (handle.vm_dir / "state.json").exists()


def write_state(vm_dir: Path, pid: int, starttime: int, service: str) -> None:
    vm_dir.mkdir(parents=True, exist_ok=True)
    state = {
        "service": service,
        "pid": pid,
        "starttime": starttime,
        "socket": str(vm_dir / "firecracker.sock"),
        "spec": {},
        "spec_hash": "x",
        "api": {},
    }
    (vm_dir / "state.json").write_text(json.dumps(state))


def starttime_of(pid: int) -> int:
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text.rsplit(")", 1)[1].split()[19])


def test_reused_pid_is_never_signalled(host: Host) -> None:
    sleeper = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        vm_dir = host.vm_dir
        write_state(vm_dir, sleeper.pid, starttime_of(sleeper.pid), host.name)
        state = vm.inspect(vm_dir)
        assert state is not None
        assert not state.alive
        vm.stop(vm_dir, grace=0.2, term_grace=0.2)
        time.sleep(0.2)
        assert sleeper.poll() is None
    finally:
        kill_group(sleeper.pid)


def test_wrong_starttime_is_not_ours(host: Host) -> None:
    handle = host.start()
    write_state(handle.vm_dir, handle.pid, handle.starttime + 1, host.name)
    state = vm.inspect(handle.vm_dir)
    assert state is not None
    assert not state.alive
    vm.stop(handle.vm_dir, grace=0.2, term_grace=0.2)
    assert alive(handle.pid)


def test_pid_1_is_never_ours(tmp_path: Path) -> None:
    vm_dir = tmp_path / "vms" / "web"
    write_state(vm_dir, 1, starttime_of(1), "web")
    state = vm.inspect(vm_dir)
    assert state is not None
    assert not state.alive


def test_inspect_detects_running_and_dead_vms(host: Host) -> None:
    handle = host.start()
    state = vm.inspect(handle.vm_dir)
    assert state is not None
    assert state.alive
    assert state.spec_hash == handle.spec_hash
    os.kill(handle.pid, signal.SIGKILL)
    assert handle.process is not None
    handle.process.wait(timeout=5)
    state = vm.inspect(handle.vm_dir)
    assert state is not None
    assert not state.alive


def test_inspect_without_state_is_none(tmp_path: Path) -> None:
    assert vm.inspect(tmp_path / "vms" / "web") is None


def test_start_refuses_when_the_vm_already_runs(host: Host) -> None:
    host.start()
    with pytest.raises(vm.VMError, match="already running"):
        host.start()
    assert len(pids_with_id(host.name)) == 1


@pytest.mark.parametrize("name", ["../etc", "a/b", "Web", "", "-x"])
def test_service_names_cannot_escape_the_state_dir(tmp_path: Path, name: str) -> None:
    with pytest.raises(vm.VMError):
        vm.vm_dir_for(tmp_path, name)


def test_spec_hash_follows_vm_affecting_fields(host: Host) -> None:
    base = reconcile.spec_hash(host.service(), BOOT_ARGS)
    assert base == reconcile.spec_hash(host.service(), BOOT_ARGS)
    assert base != reconcile.spec_hash(host.service(vcpus=4), BOOT_ARGS)
    assert base != reconcile.spec_hash(host.service(), BOOT_ARGS + " quiet")


def test_socket_path_over_107_bytes_is_refused_before_any_directory(
    host: Host,
) -> None:
    deep = host.root / ("d" * 100)
    with pytest.raises(vm.VMError, match="longer than 107 bytes"):
        vm.start(
            host.service(),
            firecracker_bin=str(FIRECRACKER_BIN),
            state_dir=deep,
            boot_args=BOOT_ARGS,
        )
    assert not deep.exists()


def test_start_waits_for_a_slow_socket(host: Host) -> None:
    host.monkeypatch.setenv("FCDOUBLE_BIND_DELAY", "1.0")
    handle = host.start(socket_timeout=5)
    assert FirecrackerClient(handle.socket).instance_info()["state"] == "Running"


def test_start_gives_up_when_the_socket_never_comes(host: Host) -> None:
    host.monkeypatch.setenv("FCDOUBLE_BIND_DELAY", "30")
    with pytest.raises(vm.VMError, match="not ready after"):
        host.start(socket_timeout=0.5)
    assert pids_with_id(host.name) == []
    assert not (host.vm_dir).exists()


def test_live_socket_without_state_is_not_taken_over(host: Host) -> None:
    handle = host.start()
    (handle.vm_dir / "state.json").unlink()
    with pytest.raises(vm.VMError, match="a firecracker answers on"):
        host.start()
    assert pids_with_id(host.name) == [handle.pid]


def test_overlong_kernel_command_line_is_refused_before_spawn(host: Host) -> None:
    with pytest.raises(vm.VMError, match="command line is too long"):
        vm.start(
            host.service(),
            firecracker_bin=str(FIRECRACKER_BIN),
            state_dir=host.state_dir,
            boot_args="x" * 2000,
        )
    assert pids_with_id(host.name) == []
