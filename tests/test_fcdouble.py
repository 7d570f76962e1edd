"""The Firecracker double answers like Firecracker 1.16.1 (behaviour doc, 1.3-1.6)."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nodeagent.firecracker import FirecrackerAPIError, FirecrackerClient
from tests.fcdouble import tap as tap_module
from tests.fcdouble.tap import IFF_NO_PI, IFF_TAP, TUNSETIFF, ifreq
from tests.fcdouble.testing import (
    alive,
    children,
    double_env,
    kill_group,
    read_log,
    spawn,
    wait_for,
)
from tests.taps import add_taps, remove_taps

NOBODY = 65534
SERDE = "An error occurred when deserializing the json body of a request: "
AFTER = "The requested operation is not supported after starting the microVM."
BEFORE = "The requested operation is not supported before starting the microVM."


@dataclass
class Double:
    process: Any
    sock: Path
    log: Path
    client: FirecrackerClient
    kernel: Path
    rootfs: Path

    def fault(self, method: str, path: str, body: Any = None) -> str:
        with pytest.raises(FirecrackerAPIError) as info:
            self.client.request(method, path, body)
        assert info.value.status == 400
        return info.value.fault_message

    def boot(self) -> None:
        self.client.put("/boot-source", {"kernel_image_path": str(self.kernel)})
        self.client.put(
            "/drives/rootfs",
            {
                "drive_id": "rootfs",
                "path_on_host": str(self.rootfs),
                "is_root_device": True,
                "is_read_only": False,
            },
        )
        self.client.action("InstanceStart")


def start_double(tmp_path: Path, **env: str) -> Double:
    sock = tmp_path / "fc.sock"
    log = tmp_path / "requests.jsonl"
    process = spawn(
        ["--api-sock", str(sock), "--id", "web"],
        double_env(FCDOUBLE_LOG=str(log), **env),
        tmp_path / "out.log",
    )
    wait_for(sock.exists, what="api socket")
    kernel = tmp_path / "vmlinux"
    rootfs = tmp_path / "rootfs.ext4"
    kernel.write_bytes(b"k")
    rootfs.write_bytes(b"r")
    return Double(process, sock, log, FirecrackerClient(str(sock)), kernel, rootfs)


@pytest.fixture
def double(tmp_path: Path) -> Iterator[Double]:
    d = start_double(tmp_path)
    yield d
    kill_group(d.process.pid)


def drive(**fields: Any) -> dict[str, Any]:
    return {"drive_id": "rootfs", "is_root_device": True, **fields}


INVALID = [
    (
        "/machine-config",
        {"vcpu_count": "2", "mem_size_mib": 256},
        'invalid type: string "2", expected an integer',
    ),
    (
        "/machine-config",
        {"vcpu_count": 2, "mem_size_mib": 256, "ht_enabled": True},
        "unknown field `ht_enabled`, expected one of",
    ),
    ("/machine-config", {"mem_size_mib": 256}, "missing field `vcpu_count`"),
    (
        "/machine-config",
        {"vcpu_count": 1, "mem_size_mib": 256, "smt": None},
        "invalid type: null, expected a boolean",
    ),
    ("/boot-source", {"boot_args": "x"}, "missing field `kernel_image_path`"),
    ("/drives/rootfs", drive(cache_type="Fast"), "unknown variant `Fast`"),
    ("/drives/rootfs", drive(is_root_device="yes"), "expected a boolean"),
    (
        "/drives/rootfs",
        drive(rate_limiter={"bandwidth": {"size": 1, "refill_time": 1, "x": 1}}),
        "unknown field `x`",
    ),
    ("/network-interfaces/eth0", {"iface_id": "eth0"}, "missing field `host_dev_name`"),
    ("/actions", {"action_type": "Reboot"}, "unknown variant `Reboot`"),
]


@pytest.mark.parametrize(("path", "body", "expected"), INVALID)
def test_invalid_bodies_get_serde_messages(
    double: Double, path: str, body: Any, expected: str
) -> None:
    message = double.fault("PUT", path, body)
    assert message.startswith(SERDE)
    assert expected in message


def test_fault_texts_match_firecracker(double: Double) -> None:
    bad = str(double.kernel) + ".missing"
    rootfs = str(double.rootfs)
    assert double.fault("PUT", "/boot-source", {"kernel_image_path": bad}) == (
        "Boot source error: The kernel file cannot be opened: No such file or"
        " directory (os error 2)"
    )
    assert (
        double.fault(
            "PUT", "/drives/rootfs", drive(drive_id="root", path_on_host=rootfs)
        )
        == "The id from the path does not match the id from the body!"
    )
    assert (
        double.fault("PUT", "/drives/root-fs", drive(path_on_host=rootfs))
        == "API Resource IDs can only contain alphanumeric characters and underscores."
    )
    assert double.fault(
        "PUT", "/drives/rootfs", drive(path_on_host="/nonexistent/disk")
    ).endswith("No such file or directory (os error 2) /nonexistent/disk")
    iface = {"iface_id": "eth1", "host_dev_name": "tap0"}
    assert (
        double.fault("PUT", "/network-interfaces/eth0", iface)
        == "The id from the path [eth0] does not match the id from the body [eth1]!"
    )
    assert double.fault("PATCH", "/boot-source", {"kernel_image_path": "/k"}) == (
        "Invalid request method and/or path: PATCH boot-source."
    )
    assert double.fault("PUT", "/machine-config") == "Empty PUT request."
    assert double.fault("PATCH", "/drives/rootfs", {"drive_id": "rootfs"}) == BEFORE
    assert double.fault("PUT", "/actions", {"action_type": "SendCtrlAltDel"}) == BEFORE


def test_second_root_drive_is_refused(double: Double) -> None:
    double.client.put("/drives/rootfs", drive(path_on_host=str(double.rootfs)))
    second = drive(drive_id="other", path_on_host=str(double.rootfs))
    assert double.fault("PUT", "/drives/other", second) == (
        "Drive config error: A root block device already exists!"
    )


def test_instance_start_needs_a_boot_source(double: Double) -> None:
    assert double.fault("PUT", "/actions", {"action_type": "InstanceStart"}) == (
        "Start microvm error: Cannot start microvm without kernel configuration."
    )
    assert double.client.instance_info()["state"] == "Not started"


def test_machine_config_put_is_a_full_replace(double: Double) -> None:
    double.client.put(
        "/machine-config", {"vcpu_count": 2, "mem_size_mib": 256, "smt": True}
    )
    double.client.put("/machine-config", {"vcpu_count": 2, "mem_size_mib": 512})
    config = double.client.get("/machine-config")
    assert config == {
        "vcpu_count": 2,
        "mem_size_mib": 512,
        "smt": False,
        "track_dirty_pages": False,
        "huge_pages": "None",
    }


def test_after_boot_only_runtime_calls_are_accepted(double: Double) -> None:
    double.boot()
    info = double.client.instance_info()
    assert info == {
        "id": "web",
        "state": "Running",
        "vmm_version": "1.16.1",
        "app_name": "Firecracker",
    }
    machine = {"vcpu_count": 1, "mem_size_mib": 128}
    assert double.fault("PUT", "/machine-config", machine) == AFTER
    boot = {"kernel_image_path": str(double.kernel)}
    assert double.fault("PUT", "/boot-source", boot) == AFTER
    assert double.fault("PUT", "/actions", {"action_type": "InstanceStart"}) == AFTER
    again = drive(path_on_host=str(double.rootfs))
    assert double.fault("PUT", "/drives/rootfs", again) == "PCI is not enabled"
    config = double.client.get("/vm/config")
    assert config["drives"][0]["path_on_host"] == str(double.rootfs)
    assert config["drives"][0]["cache_type"] == "Unsafe"
    assert config["logger"] is None


def test_ctrl_alt_del_ends_guest_and_vmm_with_exit_0(double: Double) -> None:
    double.boot()
    [guest] = children(double.process.pid)
    double.client.action("SendCtrlAltDel")
    assert double.process.wait(timeout=5) == 0
    wait_for(lambda: not alive(guest), what="guest exit")
    # Firecracker never unlinks its socket.
    assert double.sock.exists()


def test_guest_dies_with_the_vmm(double: Double) -> None:
    double.boot()
    [guest] = children(double.process.pid)
    os.kill(double.process.pid, signal.SIGKILL)
    double.process.wait(timeout=5)
    wait_for(lambda: not alive(guest), what="guest death")


def test_without_root_drive_or_initrd_the_guest_panics(double: Double) -> None:
    double.client.put("/boot-source", {"kernel_image_path": str(double.kernel)})
    double.client.action("InstanceStart")
    assert double.process.wait(timeout=5) == 0


def test_injected_fault_is_returned_after_validation(tmp_path: Path) -> None:
    d = start_double(tmp_path, FCDOUBLE_FAIL="boot-source:Boot source error: boom")
    try:
        boot = {"kernel_image_path": str(d.kernel)}
        assert d.fault("PUT", "/boot-source", boot) == "Boot source error: boom"
        # A bad body still gets the validation error, not the injected one.
        assert d.fault("PUT", "/boot-source", {}).startswith(SERDE)
    finally:
        kill_group(d.process.pid)


def test_requests_are_logged_in_order(double: Double) -> None:
    double.client.put("/machine-config", {"vcpu_count": 1, "mem_size_mib": 128})
    double.fault("PUT", "/machine-config", {"vcpu_count": 1})
    entries = read_log(double.log)
    assert [(e["method"], e["path"], e["status"]) for e in entries] == [
        ("PUT", "/machine-config", 204),
        ("PUT", "/machine-config", 400),
    ]
    assert entries[0]["body"] == {"vcpu_count": 1, "mem_size_mib": 128}
    assert "missing field `mem_size_mib`" in entries[1]["fault_message"]


def test_existing_socket_file_makes_it_exit_1(tmp_path: Path) -> None:
    sock = tmp_path / "fc.sock"
    sock.write_text("")
    out = tmp_path / "out.log"
    process = spawn(["--api-sock", str(sock), "--id", "web"], double_env(), out)
    assert process.wait(timeout=10) == 1
    assert f"Failed to open the API socket at: {sock}" in out.read_text()


@pytest.mark.parametrize(
    "argv",
    [["--api-sock=/tmp/x.sock"], ["--id", "a", "--id", "b"], ["--no-such-flag", "1"]],
)
def test_bad_arguments_exit_153(tmp_path: Path, argv: list[str]) -> None:
    process = spawn(argv, double_env(), tmp_path / "out.log")
    assert process.wait(timeout=10) == 153


def test_sighup_exits_156(double: Double) -> None:
    os.kill(double.process.pid, signal.SIGHUP)
    assert double.process.wait(timeout=5) == 156


def test_sigterm_kills_at_once_and_leaves_the_socket(double: Double) -> None:
    double.boot()
    os.kill(double.process.pid, signal.SIGTERM)
    assert double.process.wait(timeout=5) == -signal.SIGTERM
    assert double.sock.exists()


# -- TAPs, attached at PUT /network-interfaces as Firecracker attaches them


def tap_failure(reason: str, name: str) -> str:
    return (
        "Network config error: Could not create the network device: Open tap device"
        f" failed: Error while creating ifreq structure: {reason}. Invalid TUN/TAP"
        f" Backend provided by {name}. Check our documentation on setting up the"
        " network devices."
    )


@pytest.fixture
def tap() -> Iterator[str]:
    name = f"fw-{uuid.uuid4().hex[:8]}"
    add_taps([name])
    yield name
    remove_taps([name])


def test_an_existing_tap_is_attached(double: Double, tap: str) -> None:
    iface = {"iface_id": "eth0", "host_dev_name": tap, "guest_mac": "06:00:00:00:00:02"}
    double.client.put("/network-interfaces/eth0", iface)
    assert (
        double.client.get("/vm/config")["network-interfaces"][0]["host_dev_name"] == tap
    )


def test_a_tap_another_process_holds_is_busy(double: Double, tap: str) -> None:
    holder = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(holder, TUNSETIFF, ifreq(tap, IFF_TAP | IFF_NO_PI))
        iface = {"iface_id": "eth0", "host_dev_name": tap}
        assert double.fault("PUT", "/network-interfaces/eth0", iface) == tap_failure(
            "Device or resource busy (os error 16)", tap
        )
    finally:
        os.close(holder)
    assert double.client.get("/vm/config")["network-interfaces"] == []


def test_another_kind_of_device_is_an_invalid_tap(double: Double) -> None:
    iface = {"iface_id": "eth0", "host_dev_name": "lo"}
    assert double.fault("PUT", "/network-interfaces/eth0", iface) == tap_failure(
        "Invalid argument (os error 22)", "lo"
    )


def test_as_root_a_missing_tap_is_made_for_the_call_only(double: Double) -> None:
    name = f"fw-{uuid.uuid4().hex[:8]}"
    double.client.put(
        "/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": name}
    )
    # Firecracker's own TAP is not persistent: nothing is left on the host.
    assert not Path(f"/sys/class/net/{name}").exists()


def test_unprivileged_a_missing_tap_cannot_be_made() -> None:
    """As the jailed Firecracker: its own TUN device node, but no CAP_NET_ADMIN."""
    name = f"fw-{uuid.uuid4().hex[:8]}"
    jail = Path(tempfile.mkdtemp(prefix="fcdouble-tun-"))
    try:
        jail.chmod(0o755)
        tun = jail / "tun"
        os.mknod(tun, 0o600 | stat.S_IFCHR, os.makedev(10, 200))
        os.chown(tun, NOBODY, NOBODY)
        # The probe's own source, run by the system Python as nobody, which
        # may not be able to read the checkout.
        probe = Path(tap_module.__file__).read_text() + (
            "\nimport sys\nprint(attach_error(sys.argv[1], sys.argv[2]))\n"
        )
        done = subprocess.run(
            ["/usr/bin/python3", "-c", probe, name, str(tun)],
            cwd="/",
            user=NOBODY,
            group=NOBODY,
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        shutil.rmtree(jail)
    assert done.stdout.strip() == tap_failure(
        "Operation not permitted (os error 1)", name
    ).removeprefix("Network config error: Could not create the network device: ")
