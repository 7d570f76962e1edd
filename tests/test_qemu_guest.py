"""The Firecracker double boots a real guest in QEMU (``FCDOUBLE_BACKEND=qemu``).

The guest is the cached test guest (``tests/guest``): a Debian cloud kernel, an
initrd that loads virtio, and a rootfs with the product's fc-init and a small
web service that publishes its environment. It runs on a TAP, made the way the
agent makes it, on a bridge inside a network namespace this module owns; every
request goes to the guest's address in that namespace. Needs root.

One guest boots per module and serves several tests; Ctrl-Alt-Del, which ends
it, comes last in the file. The command line builder's table tests are in ``tests/test_qemu_argv.py``.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from nodeagent.firecracker import FirecrackerAPIError, FirecrackerClient
from nodeagent.network.host import HostNetwork
from tests.fcdouble.testing import (
    FIRECRACKER_BIN,
    alive,
    children,
    double_env,
    kill_group,
    wait_for,
)
from tests.guest.build import TestGuest, ensure_test_guest
from tests.netns import Namespaces, popen_in, python_in

BRIDGE = "fwbr0"
TAP = "fw-tap0"
GATEWAY = "10.91.0.1"
GUEST_IP = "10.91.0.2"
GUEST_MAC = "06:00:0a:5b:00:02"
PORT = 8080
MSG = 'a b "c"'
BOOT_TIMEOUT = 60.0  # TCG on two busy cores: 3-10 s is usual
EXIT_TIMEOUT = 20.0


def boot_args(ip: str = GUEST_IP) -> str:
    """The command line the agent would give: network, env, reboot on C-A-D."""
    msg64 = base64.urlsafe_b64encode(MSG.encode()).decode().rstrip("=")
    return (
        "console=ttyS0 reboot=k panic=1 pci=off init=/sbin/fc-init"
        f" ip={ip}::{GATEWAY}:255.255.255.0::eth0:off"
        f" firework.env.GREETING=hi firework.env64.MSG={msg64}"
    )


@dataclass
class Double:
    """A QEMU-backed Firecracker double and its API client."""

    process: subprocess.Popen[bytes]
    client: FirecrackerClient
    console: Path

    def qemu(self) -> list[int]:
        """The double's QEMU child, if running."""
        return [pid for pid in children(self.process.pid) if alive(pid)]


def start_double(tmp: Path, ns: str | None = None) -> Double:
    """Start the double (inside ``ns`` when given) with the QEMU backend."""
    sock = tmp / "fc.sock"
    console = tmp / "console.log"
    # ip netns exec execs in place: the pid is the double's
    prefix = ["ip", "netns", "exec", ns] if ns else []
    env = double_env(FCDOUBLE_BACKEND="qemu", FCDOUBLE_LOG=str(tmp / "api.jsonl"))
    with console.open("ab") as out:
        process = subprocess.Popen(
            [*prefix, str(FIRECRACKER_BIN), "--api-sock", str(sock), "--id", "qg"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    client = FirecrackerClient(str(sock), timeout=40)

    def answers() -> bool:
        # the socket file appears at bind(), a moment before listen()
        try:
            return bool(client.instance_info())
        except OSError:
            return False

    wait_for(answers, timeout=10, what="api socket")
    return Double(process, client, console)


def configure(
    double: Double,
    guest: TestGuest,
    rootfs: Path,
    tap: str | None,
    args: str = boot_args(),
) -> None:
    """Machine, boot source, root drive and (optionally) a NIC, as the agent would."""
    client = double.client
    client.put("/machine-config", {"vcpu_count": 2, "mem_size_mib": 256})
    client.put(
        "/boot-source",
        {
            "kernel_image_path": str(guest.kernel),
            "initrd_path": str(guest.initrd),
            "boot_args": args,
        },
    )
    client.put(
        "/drives/rootfs",
        {
            "drive_id": "rootfs",
            "path_on_host": str(rootfs),
            "is_root_device": True,
            "is_read_only": False,
        },
    )
    if tap is not None:
        client.put(
            "/network-interfaces/eth0",
            {"iface_id": "eth0", "host_dev_name": tap, "guest_mac": GUEST_MAC},
        )


def http_get(ns: str, path: str, timeout: float = 5.0) -> str:
    """GET from the guest, from inside ``ns``; no proxy can get in the way."""
    code = (
        "import sys, urllib.request as u\n"
        "opener = u.build_opener(u.ProxyHandler({}))\n"
        f"url = 'http://{GUEST_IP}:{PORT}{path}'\n"
        f"sys.stdout.write(opener.open(url, timeout={timeout}).read().decode())\n"
    )
    return python_in(ns, code, timeout=timeout + 10).stdout


def wait_for_health(double: Double, ns: str, timeout: float) -> float:
    """Poll ``/health`` from inside ``ns`` until it answers ok; seconds taken.

    Fails at once, with the console's tail, when the double exits first.
    """
    code = (
        "import sys, time, urllib.request as u\n"
        "opener = u.build_opener(u.ProxyHandler({}))\n"
        f"url = 'http://{GUEST_IP}:{PORT}/health'\n"
        "while True:\n"
        "    try:\n"
        "        if opener.open(url, timeout=2).read() == b'ok\\n':\n"
        "            sys.exit(0)\n"
        "    except OSError:\n"
        "        time.sleep(0.3)\n"
    )
    started = time.monotonic()
    poller = popen_in(ns, [sys.executable, "-c", code])
    try:
        while poller.poll() is None:
            if double.process.poll() is not None:
                tail = double.console.read_text(errors="replace")[-3000:]
                raise AssertionError(f"the VM ended before /health answered:\n{tail}")
            if time.monotonic() - started > timeout:
                raise AssertionError(f"/health did not answer within {timeout:.0f} s")
            time.sleep(0.1)
    finally:
        kill_group(poller.pid)
    assert poller.returncode == 0
    return time.monotonic() - started


@dataclass
class BootedVm:
    """The module's guest: its double, namespace and boot time."""

    double: Double
    ns: str
    seconds_to_health: float


@pytest.fixture(scope="module")
def guest() -> TestGuest:
    """The cached test guest (built on first use)."""
    return ensure_test_guest()


@pytest.fixture(scope="module")
def vm(
    guest: TestGuest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BootedVm]:
    """One guest on a TAP in a fresh namespace, booted until /health answers."""
    tmp = tmp_path_factory.mktemp("qemu-guest")
    rootfs = tmp / "rootfs.ext4"
    shutil.copyfile(guest.rootfs, rootfs)  # the guest writes to its root drive
    spaces = Namespaces()
    double: Double | None = None
    try:
        ns = spaces.new("qemu")
        with HostNetwork(BRIDGE, GATEWAY, 24, netns=ns) as network:
            network.ensure_bridge()
            network.ensure_tap(TAP)  # the agent's TAP flags (vnet_hdr, one queue)
        double = start_double(tmp, ns)
        configure(double, guest, rootfs, TAP)
        double.client.action("InstanceStart")
        seconds = wait_for_health(double, ns, BOOT_TIMEOUT)
        yield BootedVm(double, ns, seconds)
    finally:
        if double is not None:
            kill_group(double.process.pid)
        spaces.close()


def test_guest_answers_health_over_the_bridge(vm: BootedVm) -> None:
    assert http_get(vm.ns, "/health") == "ok\n"
    assert vm.double.client.instance_info()["state"] == "Running"
    assert len(vm.double.qemu()) == 1


def test_guest_env_comes_from_the_kernel_command_line(vm: BootedVm) -> None:
    env = http_get(vm.ns, "/env.txt").splitlines()
    assert "GREETING=hi" in env
    assert f"MSG={MSG}" in env  # decoded from base64url, spaces and quotes intact
    page = http_get(vm.ns, "/")
    assert "GREETING=hi" in page
    assert "MSG=a b &quot;c&quot;" in page or 'MSG=a b "c"' in page


def test_serial_console_is_the_double_stdout_with_firecracker_root_args(
    vm: BootedVm,
) -> None:
    console = vm.double.console.read_text(errors="replace")
    assert "Linux version" in console
    # the double appends what Firecracker appends, after the caller's arguments
    assert f"{boot_args()} root=/dev/vda rw tsc_early_khz=2000000" in console


def test_qemu_leaves_the_double_stdout_blocking(vm: BootedVm) -> None:
    # QEMU sets O_NONBLOCK on its stdout; the double's own must not get it.
    fdinfo = Path(f"/proc/{vm.double.process.pid}/fdinfo/1").read_text()
    flags = int(fdinfo.split("flags:")[1].split()[0], 8)
    assert not flags & os.O_NONBLOCK
    [qemu] = vm.double.qemu()
    qemu_flags = Path(f"/proc/{qemu}/fdinfo/1").read_text().split("flags:")[1]
    assert int(qemu_flags.split()[0], 8) & os.O_NONBLOCK  # the reason for the above


def test_ctrl_alt_del_reboots_the_guest_and_the_double_exits_0(vm: BootedVm) -> None:
    # Last test of the module guest: it ends the guest.
    [qemu] = vm.double.qemu()
    vm.double.client.action("SendCtrlAltDel")
    assert vm.double.process.wait(timeout=EXIT_TIMEOUT) == 0
    wait_for(lambda: not alive(qemu), timeout=5, what="qemu exit")
    console = vm.double.console.read_text(errors="replace")
    # The keys reached PID 1 as SIGINT (not an instant kernel reset): fc-init
    # stopped the service before it rebooted.
    assert "stopping service signal=INT" in console
    assert "reboot: Restarting system" in console


# -- without a network: process lifetime and start-up errors ------------------------


@contextmanager
def started_offline(
    guest: TestGuest, tmp_path: Path, args: str = boot_args()
) -> Iterator[Double]:
    """A double with its own copy of the guest, past InstanceStart, no network."""
    rootfs = tmp_path / "rootfs.ext4"
    shutil.copyfile(guest.rootfs, rootfs)
    double = start_double(tmp_path)
    try:
        configure(double, guest, rootfs, tap=None, args=args)
        double.client.action("InstanceStart")
        yield double
    finally:
        kill_group(double.process.pid)


def test_killing_the_double_kills_qemu(guest: TestGuest, tmp_path: Path) -> None:
    with started_offline(guest, tmp_path) as double:
        [qemu] = double.qemu()
        os.kill(double.process.pid, signal.SIGKILL)
        double.process.wait(timeout=5)
        wait_for(lambda: not alive(qemu), timeout=5, what="qemu death")


def test_qemu_dying_under_the_guest_aborts_the_double(
    guest: TestGuest, tmp_path: Path
) -> None:
    """A VMM that loses its guest without a reboot crashed: no clean exit 0."""
    with started_offline(guest, tmp_path) as double:
        [qemu] = double.qemu()
        os.kill(qemu, signal.SIGKILL)
        assert double.process.wait(timeout=EXIT_TIMEOUT) == -signal.SIGABRT


def test_initrd_failure_is_reported_and_ends_the_vm(
    guest: TestGuest, tmp_path: Path
) -> None:
    args = boot_args().replace("init=/sbin/fc-init", "init=/sbin/no-such-init")
    with started_offline(guest, tmp_path, args) as double:
        # the initrd says why and reboots instead of hanging: the VMM exits 0
        assert double.process.wait(timeout=BOOT_TIMEOUT) == 0
        console = double.console.read_text(errors="replace")
        assert "initrd: no init /sbin/no-such-init on /dev/vda" in console


def test_missing_kernel_still_fails_at_put_boot_source(tmp_path: Path) -> None:
    double = start_double(tmp_path)
    try:
        with pytest.raises(FirecrackerAPIError) as info:
            double.client.put("/boot-source", {"kernel_image_path": "/nonexistent/k"})
        assert info.value.fault_message == (
            "Boot source error: The kernel file cannot be opened: No such file or"
            " directory (os error 2)"
        )
    finally:
        kill_group(double.process.pid)


def test_unknown_backend_is_refused_at_start(tmp_path: Path) -> None:
    sock = tmp_path / "fc.sock"
    process = subprocess.Popen(
        [str(FIRECRACKER_BIN), "--api-sock", str(sock), "--id", "qg"],
        env=double_env(FCDOUBLE_BACKEND="kvm"),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, err = process.communicate(timeout=20)
    assert process.returncode == 2
    assert b"unknown FCDOUBLE_BACKEND 'kvm'" in err
    assert not sock.exists()


def test_kernel_qemu_cannot_load_fails_instance_start(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"not a kernel\n" * 400)
    double = start_double(tmp_path)
    try:
        double.client.put("/boot-source", {"kernel_image_path": str(kernel)})
        started = time.monotonic()
        with pytest.raises(FirecrackerAPIError) as info:
            double.client.action("InstanceStart")
        assert info.value.fault_message.startswith("Start microvm error: qemu exited")
        assert "invalid kernel header" in info.value.fault_message
        assert time.monotonic() - started < 10
        # like Firecracker after a failed start: still up, still before boot
        assert double.client.instance_info()["state"] == "Not started"
        assert double.qemu() == []
    finally:
        kill_group(double.process.pid)
