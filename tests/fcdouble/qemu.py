"""A guest backend that boots the VM configuration in QEMU (``FCDOUBLE_BACKEND=qemu``).

No Firecracker binary runs here, so the double boots real guests with
``qemu-system-x86_64 -M microvm`` under TCG instead. The mapping keeps what a
guest can observe close to Firecracker:

- the kernel command line gets what Firecracker appends (``root=/dev/vda rw``,
  or ``ro`` for a read-only root drive, and ``pci=off``) before any ``--``
  init part, plus ``tsc_early_khz=2000000``, without which TCG boots hang;
- drives are virtio-blk on virtio-mmio, the root drive first so that it is
  ``/dev/vda``, opened without an image lock (Firecracker takes none), with
  Firecracker's cache type and the steady rate of its drive rate limiter;
- ``smt`` gives two threads per core;
- network interfaces are virtio-net on the named TAP, with the guest MAC (their
  rate limiters have no QEMU equivalent and are not applied);
- an i8042 keyboard controller (microvm has none of its own) carries
  SendCtrlAltDel as the real key sequence, sent with QMP ``send-key``, and
  ``reboot=k`` resets through it;
- the serial console is the double's stdout, stdin is /dev/null;
- QEMU runs with ``-no-reboot``: a guest reboot (or a panic with ``panic=1``)
  ends QEMU, and with it the double, exit 0; QEMU ending any other way (killed,
  crashed) is a fault in the VMM, and the double aborts as Firecracker's
  panics do;
- QEMU dies with the double (``PR_SET_PDEATHSIG``), as a guest dies with its
  VMM.

When QEMU itself fails to start, InstanceStart fails with ``Start microvm
error: ...`` and the double stays in the pre-boot phase, as Firecracker does
after a failed InstanceStart (behaviour notes 1.6). TAP problems are refused
earlier, at ``PUT /network-interfaces``, as Firecracker refuses them (see
:mod:`tests.fcdouble.tap`).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import IO, Any

from tests.fcdouble.guest import PR_SET_PDEATHSIG, Guest, GuestBootError

QEMU = "qemu-system-x86_64"
# Firecracker's cmdline when boot_args is left out (behaviour notes 1.2).
DEFAULT_BOOT_ARGS = (
    "reboot=k panic=1 nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux"
    " i8042.dumbkbd swiotlb=noforce"
)
# Under TCG on microvm the TSC calibration stalls most boots without this.
TCG_ARGS = "tsc_early_khz=2000000"
START_TIMEOUT = 30.0
QMP_TIMEOUT = 5.0
CAD_KEYS = ("ctrl", "alt", "delete")


def split_init_args(boot_args: str) -> tuple[str, str | None]:
    """Kernel part and init part (after the first ``--``) of a command line."""
    padded = f" {boot_args} "
    at = padded.find(" -- ")
    if at < 0:
        return boot_args.strip(), None
    return padded[:at].strip(), padded[at + 4 :].strip()


def kernel_cmdline(config: dict[str, Any]) -> str:
    """The command line the guest kernel sees, with what Firecracker appends."""
    boot = config["boot-source"]
    boot_args = boot.get("boot_args")
    kernel, init = split_init_args(
        DEFAULT_BOOT_ARGS if boot_args is None else boot_args
    )
    extra = []
    root = root_drive(config)
    if root is not None:
        device = f"PARTUUID={root['partuuid']}" if root.get("partuuid") else "/dev/vda"
        extra.append(f"root={device} {'ro' if root.get('is_read_only') else 'rw'}")
    if "pci=off" not in kernel.split():
        extra.append("pci=off")
    extra.append(TCG_ARGS)
    line = " ".join(part for part in (kernel, *extra) if part)
    return line if init is None else f"{line} -- {init}".rstrip()


def root_drive(config: dict[str, Any]) -> dict[str, Any] | None:
    """The drive marked as root device, if any."""
    return next((d for d in config.get("drives", []) if d["is_root_device"]), None)


def qemu_path(path: str) -> str:
    """A path as a QEMU option value: commas are doubled."""
    return path.replace(",", ",,")


def qemu_argv(
    config: dict[str, Any],
    *,
    qmp: str,
    resolve_path: Callable[[str], str] = lambda path: path,
) -> list[str]:
    """The QEMU command for a ``GET /vm/config`` document.

    ``qmp`` names the abstract Unix socket of the QMP monitor; every file path
    goes through ``resolve_path`` (the jail's view of paths).
    """
    machine = config["machine-config"]
    boot = config["boot-source"]
    argv = [
        QEMU,
        *("-accel", "tcg", "-M", "microvm", "-cpu", "max"),
        *("-m", str(machine["mem_size_mib"]), "-smp", smp_arg(machine)),
        *("-nodefaults", "-no-user-config", "-nographic", "-no-reboot"),
        *("-serial", "stdio", "-device", "i8042"),
        *("-chardev", f"socket,id=qmp,path={qmp},abstract=on,server=on,wait=off"),
        *("-mon", "chardev=qmp,mode=control"),
        *("-kernel", qemu_path(resolve_path(boot["kernel_image_path"]))),
    ]
    if boot.get("initrd_path"):
        argv += ["-initrd", qemu_path(resolve_path(boot["initrd_path"]))]
    argv += ["-append", kernel_cmdline(config)]
    drives = sorted(config.get("drives", []), key=lambda d: not d["is_root_device"])
    for drive in drives:
        argv += drive_args(drive, resolve_path)
    for iface in config.get("network-interfaces", []):
        argv += net_args(iface)
    return argv


def drive_args(drive: dict[str, Any], resolve_path: Callable[[str], str]) -> list[str]:
    """``-drive``/``-device`` for one Firecracker drive."""
    if drive.get("path_on_host") is None:
        raise GuestBootError(
            f"drive {drive['drive_id']}: vhost-user drives are not supported by the"
            " QEMU backend"
        )
    ident = f"drive-{drive['drive_id']}"
    spec = (
        f"id={ident},file={qemu_path(resolve_path(drive['path_on_host']))},"
        "format=raw,if=none,file.locking=off"
    )
    # Unsafe (the default) offers the guest no flush; Writeback honours it.
    cache = "writeback" if drive.get("cache_type") == "Writeback" else "unsafe"
    spec += f",cache={cache}"
    if drive.get("is_read_only"):
        spec += ",readonly=on"
    spec += throttling(drive.get("rate_limiter"))
    return ["-drive", spec, "-device", f"virtio-blk-device,drive={ident}"]


def smp_arg(machine: dict[str, Any]) -> str:
    """``-smp``: the vCPUs, as two threads per core when ``smt`` is on."""
    vcpus = int(machine["vcpu_count"])
    if machine.get("smt") and vcpus % 2 == 0:
        return f"{vcpus},cores={vcpus // 2},threads=2"
    return str(vcpus)


def throttling(limiter: dict[str, Any] | None) -> str:
    """A drive's rate limiter as QEMU throttling: each bucket's refill rate.

    A token bucket refills ``size`` tokens every ``refill_time`` ms, so its
    steady rate is size * 1000 / refill_time per second; a bucket with a zero
    size or refill time limits nothing, as in Firecracker. The one-time burst
    and the bucket's depth have no QEMU equivalent and are not mapped.
    """
    options = ""
    for bucket, option in (("bandwidth", "bps-total"), ("ops", "iops-total")):
        spec = (limiter or {}).get(bucket) or {}
        size, refill_ms = int(spec.get("size", 0)), int(spec.get("refill_time", 0))
        if size > 0 and refill_ms > 0:
            options += f",throttling.{option}={max(1, size * 1000 // refill_ms)}"
    return options


def net_args(iface: dict[str, Any]) -> list[str]:
    """``-netdev``/``-device`` for one Firecracker network interface."""
    ident = f"net-{iface['iface_id']}"
    netdev = f"tap,id={ident},ifname={iface['host_dev_name']},script=no,downscript=no"
    device = f"virtio-net-device,netdev={ident}"
    if iface.get("guest_mac"):
        device += f",mac={iface['guest_mac']}"
    if iface.get("mtu"):
        device += f",host_mtu={iface['mtu']}"
    return ["-netdev", netdev, "-device", device]


def console_fd() -> int | None:
    """A fresh open of the double's stdout for QEMU's serial console, if possible.

    QEMU makes its stdout non-blocking. On an inherited descriptor that flag
    would also land on the double's own stdout (and its stderr after ``2>&1``),
    so QEMU gets its own open file description of the same file or pipe.
    """
    try:
        return os.open("/proc/self/fd/1", os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    except OSError:  # a socket, say: share the descriptor after all
        return None


class Qmp:
    """A short QMP session on QEMU's abstract monitor socket."""

    def __init__(self, name: str, timeout: float = QMP_TIMEOUT):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect("\0" + name)
        except OSError:
            self.sock.close()
            raise
        self.file = self.sock.makefile("rw")
        self.file.readline()  # the greeting
        self.execute("qmp_capabilities")

    def execute(self, command: str, **arguments: Any) -> Any:
        """Run one command; return its result, skipping events."""
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self.file.write(json.dumps(message) + "\n")
        self.file.flush()
        while True:
            line = self.file.readline()
            if not line:
                raise OSError("QMP connection closed")
            reply = json.loads(line)
            if "error" in reply:
                raise OSError(f"QMP {command}: {reply['error'].get('desc')}")
            if "return" in reply:
                return reply["return"]

    def close(self) -> None:
        """Hang up."""
        self.file.close()
        self.sock.close()


class QemuGuest:
    """A running QEMU; its exit is the guest's end."""

    def __init__(self, process: subprocess.Popen[bytes], qmp: str, stderr: StderrTail):
        self.process = process
        self.qmp = qmp
        self.stderr = stderr

    def ctrl_alt_del(self) -> None:
        """Press Ctrl-Alt-Del on the guest's keyboard (i8042, like Firecracker).

        As with Firecracker, the call succeeds whatever the guest does with the
        keys, and a guest that is already going away is not an error.
        """
        keys = [{"type": "qcode", "data": key} for key in CAD_KEYS]
        with contextlib.suppress(OSError, ValueError):
            session = Qmp(self.qmp)
            try:
                session.execute("send-key", keys=keys)
            finally:
                session.close()

    def wait(self) -> int:
        """Wait for QEMU to exit."""
        code = self.process.wait()
        self.stderr.done.wait(timeout=2)
        return code


class StderrTail:
    """Copies QEMU's stderr to the double's stderr and keeps the last lines."""

    def __init__(self, stream: IO[bytes]):
        self.lines: deque[str] = deque(maxlen=5)
        self.done = threading.Event()
        self.stream = stream
        threading.Thread(target=self._copy, daemon=True, name="qemu_stderr").start()

    def _copy(self) -> None:
        for raw in self.stream:
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            with contextlib.suppress(OSError):  # nobody reads our stderr any more
                print(line, file=sys.stderr, flush=True)
        self.done.set()

    def text(self) -> str:
        """The last lines, joined."""
        return " ".join(self.lines)


class QemuBackend:
    """Boots each guest in its own QEMU."""

    def __init__(self, resolve_path: Callable[[str], str] = lambda path: path):
        self.resolve_path = resolve_path

    def boot(self, config: dict[str, Any]) -> Guest:
        """Start QEMU; return once its vCPUs run, like Firecracker's InstanceStart."""
        qmp = f"fcdouble-qmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        argv = qemu_argv(config, qmp=qmp, resolve_path=self.resolve_path)
        parent = os.getpid()
        libc = ctypes.CDLL(None, use_errno=True)

        def die_with_the_vmm() -> None:
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent:  # the VMM died before prctl took effect
                os.kill(os.getpid(), signal.SIGKILL)

        if shutil.which(QEMU) is None:
            raise GuestBootError(f"{QEMU} not found (apt-get install qemu-system-x86)")
        console = console_fd()
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.PIPE,
                preexec_fn=die_with_the_vmm,  # only a prctl runs there
            )
        except OSError as exc:
            raise GuestBootError(f"cannot run {QEMU}: {exc}") from exc
        finally:
            if console is not None:
                os.close(console)
        assert process.stderr is not None
        guest = QemuGuest(process, qmp, StderrTail(process.stderr))
        self._wait_running(guest)
        return guest

    def _wait_running(self, guest: QemuGuest) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if guest.process.poll() is not None:
                guest.stderr.done.wait(timeout=2)
                raise GuestBootError(
                    f"qemu exited with {guest.process.returncode}: {guest.stderr.text()}"
                )
            with contextlib.suppress(OSError, ValueError):
                session = Qmp(guest.qmp)
                try:
                    if session.execute("query-status").get("running"):
                        return
                finally:
                    session.close()
            time.sleep(0.02)
        guest.process.kill()
        guest.process.wait()
        raise GuestBootError(f"qemu did not start within {START_TIMEOUT:.0f} s")
