"""Jailer mode of the driver, against the jailer and Firecracker doubles.

Real processes and sockets: the jailer double lays out the jail and execs the
Firecracker double in place, which binds its in-jail socket below the jail root.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodeagent import adopt, reconcile, vm
from nodeagent.config import parse_agent_config
from nodeagent.firecracker import FirecrackerAPIError, FirecrackerClient
from nodeagent.jailer import API_SOCK, Jailer, JailerError
from nodeagent.spec import ServiceConfig
from tests.fcdouble.testing import (
    FIRECRACKER_BIN,
    JAILER_BIN,
    alive,
    double_env,
    kill_group,
    pids_with_id,
    read_log,
    wait_for,
)

BOOT_ARGS = "console=ttyS0 reboot=k panic=1 pci=off init=/sbin/fc-init"
UID = GID = 10000
GRACE = 0.3


class Host:
    """A state dir, a short chroot base, image files and the doubles' knobs."""

    def __init__(self, tmp_path: Path, base: Path, monkeypatch: pytest.MonkeyPatch):
        self.root = tmp_path
        self.state_dir = tmp_path / "state"
        self.base = base
        self.log = tmp_path / "requests.jsonl"
        self.monkeypatch = monkeypatch
        self.pids: list[int] = []
        # Unique per test: other suites on this host may run VMs named "web".
        self.name = f"web-{uuid.uuid4().hex[:8]}"
        self.vm_dir = self.state_dir / "vms" / self.name
        self.jailer = Jailer(str(JAILER_BIN), str(FIRECRACKER_BIN), UID, GID, str(base))
        self.jail = base / "firecracker" / self.name
        for name in ("vmlinux", "initrd.img", "web.ext4"):
            (tmp_path / name).write_bytes(b"x")
        monkeypatch.setenv("FIREWORK_PYTHON", sys.executable)
        monkeypatch.setenv("FCDOUBLE_LOG", str(self.log))

    def service(self, **fields: Any) -> ServiceConfig:
        data = {
            "name": self.name,
            "image": str(self.root / "web.ext4"),
            "kernel": str(self.root / "vmlinux"),
            "initrd": str(self.root / "initrd.img"),
            "vcpus": 2,
            "memory_mb": 256,
            "kernel_args": BOOT_ARGS,
            **fields,
        }
        return ServiceConfig.model_validate(data)

    def start(self, service: ServiceConfig | None = None, **kw: Any) -> vm.VMHandle:
        handle = vm.start(
            service or self.service(),
            firecracker_bin=str(FIRECRACKER_BIN),
            state_dir=self.state_dir,
            boot_args=BOOT_ARGS,
            jailer=kw.pop("jailer", self.jailer),
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
def base() -> Iterator[Path]:
    # Short on purpose: the host socket path must stay within 107 bytes.
    path = Path(tempfile.mkdtemp(prefix="fj", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def host(tmp_path: Path, base: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Host]:
    h = Host(tmp_path, base, monkeypatch)
    yield h
    for pid in h.pids:
        kill_group(pid)
    for pid in pids_with_id(h.name):
        kill_group(pid)


def argv_of(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


# -- the Jailer itself -------------------------------------------------------


def test_argv_is_exact_with_separate_tokens() -> None:
    jailer = Jailer("/usr/bin/jailer", "/usr/bin/firecracker", 10001, 10002, "/srv/j")
    expected = (
        "/usr/bin/jailer --id web --exec-file /usr/bin/firecracker --uid 10001"
        " --gid 10002 --chroot-base-dir /srv/j -- --api-sock /run/firecracker.socket"
    )
    assert jailer.argv("web") == expected.split(" ")


def test_paths_follow_the_jailer_layout() -> None:
    jailer = Jailer("/usr/bin/jailer", "/usr/bin/firecracker", 1, 1, "/srv/jailer")
    root = "/srv/jailer/firecracker/web/root"
    assert jailer.jail_dir("web") == Path(root).parent
    assert jailer.root("web") == Path(root)
    assert jailer.socket_path("web") == f"{root}/run/firecracker.socket"
    assert jailer.pid_file("web") == Path(f"{root}/firecracker.pid")


def test_from_config_is_none_without_jailer_bin_else_takes_the_keys() -> None:
    git = {"store_url": "https://git.example.com/ops.git"}
    assert Jailer.from_config(parse_agent_config(git)[0]) is None
    keys = {"firecracker_bin": "/opt/fc/firecracker", "jailer_bin": "/opt/fc/jailer"}
    more = {"jailer_uid": 20000, "jailer_chroot_base": "/var/jail"}
    config, _ = parse_agent_config({**git, **keys, **more})
    assert Jailer.from_config(config) == Jailer(
        "/opt/fc/jailer", "/opt/fc/firecracker", 20000, 10000, "/var/jail"
    )


def test_symlinked_exec_file_names_the_jail_by_its_target(tmp_path: Path) -> None:
    link = tmp_path / "fc-current"
    link.symlink_to(FIRECRACKER_BIN)
    jailer = Jailer(str(JAILER_BIN), str(link), UID, GID, "/srv/jailer")
    assert jailer.exec_name == "firecracker"
    assert Jailer.from_record(jailer.record()).exec_file == str(FIRECRACKER_BIN)


@pytest.mark.parametrize("name", ["../etc", "a/b", "Web", "", "-x", ".."])
def test_ids_that_are_not_service_names_are_refused(base: Path, name: str) -> None:
    (base / "firecracker").mkdir()
    (base / "keep").write_text("")
    jailer = Jailer(str(JAILER_BIN), str(FIRECRACKER_BIN), UID, GID, str(base))
    with pytest.raises(JailerError, match="not a valid service name"):
        jailer.remove(name)
    with pytest.raises(JailerError):
        jailer.argv(name)
    assert (base / "keep").exists()
    assert (base / "firecracker").is_dir()


# -- starting a jailed VM ----------------------------------------------------


def test_resources_are_hard_linked_and_owned_by_the_jail_user(host: Host) -> None:
    host.start()
    root = host.jail / "root"
    for name in ("vmlinux", "initrd.img", "web.ext4"):
        inside, outside = (root / name).stat(), (host.root / name).stat()
        assert (inside.st_ino, inside.st_dev) == (outside.st_ino, outside.st_dev)
        assert (inside.st_uid, inside.st_gid) == (UID, GID)


def test_api_bodies_name_in_jail_paths(host: Host) -> None:
    handle = host.start()
    calls = host.calls()
    assert calls[1] == (
        "PUT",
        "/boot-source",
        {
            "kernel_image_path": "/vmlinux",
            "boot_args": BOOT_ARGS,
            "initrd_path": "/initrd.img",
        },
    )
    assert calls[2][2]["path_on_host"] == "/web.ext4"
    assert handle.api["boot-source"]["kernel_image_path"] == "/vmlinux"
    assert handle.api["drives"][0]["path_on_host"] == "/web.ext4"


def test_applied_spec_does_not_depend_on_the_jail(host: Host) -> None:
    handle = host.start()
    assert handle.spec == reconcile.vm_spec(host.service(), BOOT_ARGS)
    assert handle.spec_hash == reconcile.spec_hash(host.service(), BOOT_ARGS)
    assert str(host.base) not in json.dumps(handle.spec)


def test_jailed_vm_runs_and_is_recorded(host: Host) -> None:
    handle = host.start()
    assert handle.socket == host.jailer.socket_path(host.name)
    info = FirecrackerClient(handle.socket).instance_info()
    assert (info["id"], info["state"]) == (host.name, "Running")
    # The jailer exec'd in place: same pid, the agent stays the parent.
    assert handle.process is not None and handle.pid == handle.process.pid
    assert os.getsid(handle.pid) == handle.pid  # its own session, as without a jail
    assert (host.jail / "root" / "firecracker.pid").read_text() == str(handle.pid)
    argv = argv_of(handle.pid)
    assert argv[argv.index("--api-sock") + 1] == API_SOCK
    assert argv[argv.index("--id") + 1] == host.name
    assert "--start-time-us" in argv
    state = json.loads((host.vm_dir / "state.json").read_text())
    assert state["socket"] == handle.socket
    assert state["api_sock"] == API_SOCK
    assert state["jailer"]["chroot_base"] == str(host.base)
    inspected = vm.inspect(host.vm_dir)
    assert inspected is not None and inspected.alive
    assert inspected.jailer == host.jailer


def test_two_resources_with_one_base_name_get_distinct_names(host: Host) -> None:
    (host.root / "disk").mkdir()
    (host.root / "disk" / "vmlinux").write_bytes(b"rootfs")
    host.start(host.service(image=str(host.root / "disk" / "vmlinux"), initrd=None))
    body = host.calls()[2][2]
    assert body["path_on_host"] == "/vmlinux-2"
    assert (host.jail / "root" / "vmlinux-2").read_bytes() == b"rootfs"


def test_resource_on_another_filesystem_is_copied(host: Host) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == host.base.stat().st_dev:
        pytest.skip("needs /dev/shm on a filesystem of its own")
    kernel = shm / f"vmlinux-{host.name}"
    kernel.write_bytes(b"kernel")
    try:
        host.start(host.service(kernel=str(kernel)))
        copy = host.jail / "root" / kernel.name
        assert copy.read_bytes() == b"kernel"
        assert copy.stat().st_ino != kernel.stat().st_ino
        assert copy.stat().st_uid == UID
    finally:
        kernel.unlink()


def test_missing_resource_fails_before_spawning(host: Host) -> None:
    service = host.service(kernel=str(host.root / "no-such-kernel"))
    with pytest.raises(vm.VMError, match=f"service {host.name}: cannot put"):
        host.start(service)
    assert pids_with_id(host.name) == []
    assert not host.jail.exists()


def test_host_socket_over_107_bytes_is_refused_before_spawning(
    host: Host,
) -> None:
    deep = host.base / ("d" * 60)
    deep.mkdir()
    jailer = Jailer(str(JAILER_BIN), str(FIRECRACKER_BIN), UID, GID, str(deep))
    with pytest.raises(vm.VMError) as info:
        host.start(jailer=jailer)
    assert str(info.value).startswith(f"service {host.name}: socket path {deep}/")
    assert "longer than 107 bytes" in str(info.value)
    assert pids_with_id(host.name) == []
    assert list(deep.iterdir()) == []
    assert not host.vm_dir.exists()


def test_missing_chroot_base_is_a_clear_error(host: Host) -> None:
    jailer = Jailer(
        str(JAILER_BIN), str(FIRECRACKER_BIN), UID, GID, str(host.base / "none")
    )
    with pytest.raises(vm.VMError, match=r"chroot base \S+ does not exist"):
        host.start(jailer=jailer)
    assert pids_with_id(host.name) == []


def test_failed_start_removes_the_jail(host: Host) -> None:
    host.monkeypatch.setenv("FCDOUBLE_FAIL", "InstanceStart:boom")
    with pytest.raises(vm.VMError, match=f"service {host.name}: boom"):
        host.start()
    assert pids_with_id(host.name) == []
    assert not host.jail.exists()
    assert not host.vm_dir.exists()


# -- leftovers, stop and adoption --------------------------------------------


def test_leftover_jail_of_a_dead_run_is_cleaned_before_start(host: Host) -> None:
    first = host.start()
    os.kill(first.pid, signal.SIGKILL)
    assert first.process is not None
    first.process.wait(timeout=5)
    assert (host.jail / "root" / "firecracker.pid").exists()
    second = host.start()
    assert second.pid != first.pid
    info = FirecrackerClient(second.socket).instance_info()
    assert info["state"] == "Running"


def test_leftover_pid_file_alone_does_not_block_a_start(host: Host) -> None:
    root = host.jail / "root"
    root.mkdir(parents=True)
    (root / "firecracker.pid").write_text("999999999")
    handle = host.start()
    assert (root / "firecracker.pid").read_text() == str(handle.pid)


def test_a_live_jail_is_never_removed(host: Host) -> None:
    handle = host.start()
    with pytest.raises(JailerError, match=f"in use by pid {handle.pid}"):
        host.jailer.remove(host.name)
    assert (host.jail / "root" / "vmlinux").exists()
    assert alive(handle.pid)


def test_stop_removes_the_jail(host: Host) -> None:
    handle = host.start()
    vm.stop(handle, grace=5)
    assert handle.process is not None and handle.process.returncode == 0
    assert not host.jail.exists()
    assert host.jail.parent.is_dir()  # only <base>/<exec>/<id> goes
    assert vm.inspect(host.vm_dir) is None


def test_stop_by_state_dir_removes_the_jail(host: Host) -> None:
    host.monkeypatch.setenv("FCDOUBLE_GUEST", "ignore-cad")
    handle = host.start()
    vm.stop(host.vm_dir, grace=GRACE, term_grace=GRACE)
    wait_for(lambda: not alive(handle.pid), what="vmm exit")
    assert not host.jail.exists()


def test_adoption_keeps_a_jailed_vm_running(host: Host) -> None:
    handle = host.start()
    desired = {host.name: handle.spec_hash}
    report = adopt.adopt(host.state_dir, desired, grace=GRACE, term_grace=GRACE)
    assert [(r.name, r.pid) for r in report.adopted] == [(host.name, handle.pid)]
    assert report.stopped == report.cleaned == report.failed == []
    assert alive(handle.pid)
    assert pids_with_id(host.name) == [handle.pid]


def test_adoption_stops_an_undesired_jailed_vm_and_its_jail(host: Host) -> None:
    handle = host.start()
    report = adopt.adopt(host.state_dir, {}, grace=GRACE, term_grace=GRACE)
    assert [o.code for o in report.stopped] == ["not_desired"]
    wait_for(lambda: not alive(handle.pid), what="vmm exit")
    assert not host.jail.exists()


def test_record_without_api_sock_means_the_same_socket(tmp_path: Path) -> None:
    vm_dir = tmp_path / "vms" / "web"
    vm_dir.mkdir(parents=True)
    socket = str(vm_dir / "firecracker.sock")
    record = {"service": "web", "pid": 999999999, "starttime": 1, "socket": socket}
    record.update({"spec": {}, "spec_hash": "x", "api": {}})
    (vm_dir / "state.json").write_text(json.dumps(record))
    state = vm.inspect(vm_dir)
    assert state is not None
    assert state.api_sock == state.socket
    assert state.jailer is None


# -- the jailer double -------------------------------------------------------


def run_jailer(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(JAILER_BIN), *argv],
        env=double_env(),
        capture_output=True,
        text=True,
        timeout=20,
    )


def jailer_args(base: Path, **override: str) -> list[str]:
    flags = {
        "--id": "web",
        "--exec-file": str(FIRECRACKER_BIN),
        "--uid": str(UID),
        "--gid": str(GID),
        "--chroot-base-dir": str(base),
        **override,
    }
    return [token for pair in flags.items() for token in pair]


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--id=web"], "Found argument '--id=web' which wasn't expected"),
        (["--uid", "1", "--gid", "1"], "Argument '--id' required, but not found"),
        (["--id", "web", "--id", "api"], "Found argument '--id' which wasn't"),
        (["--id"], "The argument '--id' requires a value"),
    ],
)
def test_double_parses_like_the_real_jailer(
    base: Path, argv: list[str], error: str
) -> None:
    result = run_jailer(argv)
    assert result.returncode == 1
    assert error in result.stderr
    assert list(base.iterdir()) == []


@pytest.mark.parametrize(
    ("override", "extra", "error"),
    [
        ({"--chroot-base-dir": "/nonexistent-fj"}, [], "Failed to canonicalize path"),
        ({"--id": "web_1"}, [], "Invalid instance ID: Invalid char (_) at position 3"),
        ({"--exec-file": "/tmp"}, [], "/tmp is not a file"),
        ({"--uid": "-1"}, [], "Invalid uid: -1"),
        ({"--gid": "x"}, [], "Invalid gid: x"),
        ({}, ["--daemonize"], "--daemonize is not implemented by the double"),
    ],
)
def test_double_checks_its_inputs(
    base: Path, override: dict[str, str], extra: list[str], error: str
) -> None:
    result = run_jailer([*jailer_args(base, **override), *extra])
    assert result.returncode == 1
    assert error in result.stderr


def test_double_refuses_a_leftover_pid_file(base: Path) -> None:
    root = base / "firecracker" / "web" / "root"
    root.mkdir(parents=True)
    (root / "firecracker.pid").write_text("1")
    # Only the pid file is left: the device step passes, the pid file fails.
    result = run_jailer(jailer_args(base))
    assert result.returncode == 1
    assert "Failed to open file /firecracker.pid: File exists" in result.stderr


def test_double_lays_out_the_jail_and_checks_in_jail_paths(
    base: Path, tmp_path: Path
) -> None:
    log = tmp_path / "requests.jsonl"
    process = subprocess.Popen(
        [str(JAILER_BIN), *jailer_args(base), "--", "--api-sock", API_SOCK],
        env=double_env(FCDOUBLE_LOG=str(log)),
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        root = base / "firecracker" / "web" / "root"
        sock = root / "run" / "firecracker.socket"
        wait_for(sock.exists, what="api socket in the jail")
        for sub in ("", "dev", "dev/net", "run"):
            st = (root / sub).stat()
            assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o700, UID, GID)
        assert (root / "firecracker").read_bytes() == FIRECRACKER_BIN.read_bytes()
        assert (root / "firecracker.pid").read_text() == str(process.pid)
        (tmp_path / "vmlinux").write_bytes(b"k")
        client = FirecrackerClient(str(sock))
        # A host path is not visible inside the jail ...
        with pytest.raises(FirecrackerAPIError, match="kernel file cannot be opened"):
            client.put("/boot-source", {"kernel_image_path": str(tmp_path / "vmlinux")})
        # ... and a linked-in file is, by its in-jail path.
        os.link(tmp_path / "vmlinux", root / "vmlinux")
        client.put("/boot-source", {"kernel_image_path": "/vmlinux"})
        drive = {
            "drive_id": "rootfs",
            "path_on_host": "/rootfs.ext4",
            "is_root_device": True,
            "is_read_only": False,
        }
        with pytest.raises(FirecrackerAPIError, match="No such file or directory"):
            client.put("/drives/rootfs", drive)
    finally:
        kill_group(process.pid)
