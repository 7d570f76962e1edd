"""The Firecracker driver: start, stop and inspect one microVM.

Each VM lives in ``state_dir/vms/<service>/``: the API socket, the VMM's log and
``state.json`` (pid, process start time, socket and the applied spec with its
hash). The VMM runs in its own session so that signals aimed at the agent never
reach it, and the agent can be restarted while VMs keep running.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodeagent.atomicfile import write_atomic
from nodeagent.firecracker import START_TIMEOUT, FirecrackerAPIError, FirecrackerClient
from nodeagent.reconcile import hash_spec
from nodeagent.reconcile import vm_spec as applied_spec
from nodeagent.spec import ServiceConfig

log = logging.getLogger(__name__)

SOCKET_NAME = "firecracker.sock"
LOG_NAME = "firecracker.log"
STATE_NAME = "state.json"
SUN_PATH_MAX = 107  # sockaddr_un.sun_path minus the terminating NUL
CMDLINE_MAX = 2048
# Firecracker appends "root=/dev/vda rw" (or a PARTUUID form) and "pci=off" at
# InstanceStart, so a command line near the limit would fail only then.
CMDLINE_MARGIN = 64
SERVICE_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
ROOT_DRIVE_ID = "rootfs"
IFACE_ID = "eth0"


class VMError(Exception):
    """Starting or stopping a VM failed; the message says why, verbatim."""


@dataclass
class VMHandle:
    """A VM this agent started (``process`` is set) or found (``process`` None).

    ``spec`` is the applied spec (:func:`nodeagent.reconcile.vm_spec` with the
    boot args) and ``spec_hash`` its hash; ``api`` holds the bodies sent.
    """

    service: str
    vm_dir: Path
    pid: int
    starttime: int
    socket: str
    spec: dict[str, Any]
    spec_hash: str
    api: dict[str, Any]
    process: subprocess.Popen[bytes] | None = None


@dataclass(frozen=True)
class VMState:
    """What ``state.json`` records, and whether that VMM is still ours and alive."""

    service: str
    pid: int
    starttime: int
    socket: str
    spec: dict[str, Any]
    spec_hash: str
    api: dict[str, Any]
    alive: bool


def api_bodies(service: ServiceConfig, boot_args: str) -> dict[str, Any]:
    """The API bodies that configure the VM of ``service``, by resource.

    The network interface uses the service's TAP and, when set, its guest MAC.
    """
    boot: dict[str, Any] = {
        "kernel_image_path": service.kernel,
        "boot_args": boot_args,
    }
    if service.initrd:
        boot["initrd_path"] = service.initrd
    spec: dict[str, Any] = {
        "machine-config": {
            # Sent in full: PUT /machine-config resets what it leaves out.
            "vcpu_count": service.vcpus,
            "mem_size_mib": service.memory_mb,
            "smt": False,
        },
        "boot-source": boot,
        "drives": [
            {
                "drive_id": ROOT_DRIVE_ID,
                "path_on_host": service.image,
                "is_root_device": True,
                "is_read_only": False,
            }
        ],
        "network-interfaces": [],
    }
    if service.network is not None:
        iface: dict[str, Any] = {
            "iface_id": IFACE_ID,
            "host_dev_name": service.network.interface,
        }
        if service.network.guest_mac is not None:
            iface["guest_mac"] = service.network.guest_mac
        spec["network-interfaces"].append(iface)
    return spec


def vm_dir_for(state_dir: Path, service: str) -> Path:
    """``state_dir/vms/<service>``, refusing names that could leave that folder."""
    if not SERVICE_NAME.fullmatch(service):
        raise VMError(f"service {service}: not a valid service name")
    base = (Path(state_dir) / "vms").resolve()
    path = (base / service).resolve()
    if path.parent != base:
        raise VMError(f"service {service}: state path escapes {base}")
    return path


def start(
    service: ServiceConfig,
    *,
    firecracker_bin: str,
    state_dir: Path,
    boot_args: str,
    socket_timeout: float = 5.0,
) -> VMHandle:
    """Start a Firecracker for the service, configure it, boot it, record it.

    Pass the service as resolved for the node: its network carries the TAP and
    guest MAC to use. On any failure the process group is killed and reaped,
    the VM's directory is removed, and VMError carries Firecracker's own message.
    """
    name = service.name
    vm_dir = vm_dir_for(state_dir, name)
    sock = str(vm_dir / SOCKET_NAME)
    if len(sock.encode()) > SUN_PATH_MAX:
        raise VMError(f"service {name}: socket path {sock} is longer than 107 bytes")
    if len(boot_args.encode()) + CMDLINE_MARGIN > CMDLINE_MAX:
        raise VMError(f"service {name}: kernel command line is too long")
    api = api_bodies(service, boot_args)
    spec = applied_spec(service, boot_args)
    _prepare_dir(vm_dir, sock)
    process = _spawn(firecracker_bin, vm_dir, sock, name)
    try:
        client = _wait_ready(process, sock, name, vm_dir, socket_timeout)
        _configure(client, api)
        handle = VMHandle(
            service=name,
            vm_dir=vm_dir,
            pid=process.pid,
            starttime=_starttime(process.pid) or 0,
            socket=sock,
            spec=spec,
            spec_hash=hash_spec(spec),
            api=api,
            process=process,
        )
        _write_state(handle)
    except BaseException as exc:
        _kill_group(process)
        shutil.rmtree(vm_dir, ignore_errors=True)
        if isinstance(exc, FirecrackerAPIError):
            raise VMError(f"service {name}: {exc.fault_message}") from exc
        if isinstance(exc, OSError):
            raise VMError(f"service {name}: firecracker api: {exc}") from exc
        raise
    log.info("vm started service=%s pid=%s hash=%s", name, handle.pid, handle.spec_hash)
    return handle


def _prepare_dir(vm_dir: Path, sock: str) -> None:
    vm_dir.parent.mkdir(parents=True, exist_ok=True)
    vm_dir.mkdir(mode=0o700, exist_ok=True)
    os.chmod(vm_dir, 0o700)
    state = _read_state(vm_dir)
    if state is not None and state.alive:
        raise VMError(f"service {state.service}: already running as pid {state.pid}")
    if os.path.exists(sock):
        try:
            info = FirecrackerClient(sock, timeout=0.5).instance_info()
        except (OSError, FirecrackerAPIError):
            info = None
        if info is not None:
            raise VMError(f"service {info.get('id')}: a firecracker answers on {sock}")
    # Firecracker never unlinks its socket, and refuses to start if it exists.
    Path(sock).unlink(missing_ok=True)
    (vm_dir / STATE_NAME).unlink(missing_ok=True)


def _spawn(binary: str, vm_dir: Path, sock: str, name: str) -> subprocess.Popen[bytes]:
    # Separate argv tokens: Firecracker's parser does not accept --flag=value.
    argv = [binary, "--api-sock", sock, "--id", name]
    with open(vm_dir / LOG_NAME, "ab") as out:
        return subprocess.Popen(  # noqa: S603 (argv is built from validated parts)
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )


def _wait_ready(
    process: subprocess.Popen[bytes],
    sock: str,
    name: str,
    vm_dir: Path,
    timeout: float,
) -> FirecrackerClient:
    """Poll for the socket and ``GET /`` with our id; fail at once if the VMM exits."""
    client = FirecrackerClient(sock)
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        code = process.poll()
        if code is not None:
            tail = _log_tail(vm_dir / LOG_NAME)
            raise VMError(f"service {name}: firecracker exited with {code}: {tail}")
        if os.path.exists(sock):
            try:
                info = client.instance_info()
            except (OSError, FirecrackerAPIError):
                info = {}
            if info.get("id") == name:
                return client
        if time.monotonic() > deadline:
            raise VMError(f"service {name}: firecracker api not ready after {timeout}s")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _configure(client: FirecrackerClient, spec: dict[str, Any]) -> None:
    """Firecracker's boot order; the first refusal stops everything."""
    client.put("/machine-config", spec["machine-config"])
    client.put("/boot-source", spec["boot-source"])
    for drive in spec["drives"]:
        client.put(f"/drives/{drive['drive_id']}", drive)
    for iface in spec["network-interfaces"]:
        client.put(f"/network-interfaces/{iface['iface_id']}", iface)
    client.action("InstanceStart", timeout=START_TIMEOUT)


def _write_state(handle: VMHandle) -> None:
    """Write ``state.json`` atomically: a reader sees the old file or the new one."""
    state = {
        "service": handle.service,
        "pid": handle.pid,
        "starttime": handle.starttime,
        "socket": handle.socket,
        "spec": handle.spec,
        "spec_hash": handle.spec_hash,
        "api": handle.api,
    }
    data = json.dumps(state, indent=2, sort_keys=True).encode()
    write_atomic(handle.vm_dir / STATE_NAME, data, temp_suffix=".tmp")


def _read_state(vm_dir: Path) -> VMState | None:
    try:
        data = json.loads((Path(vm_dir) / STATE_NAME).read_text())
        pid = int(data["pid"])
        starttime = int(data["starttime"])
        service = str(data["service"])
        sock = str(data["socket"])
        alive = _is_ours(pid, starttime, service, sock)
        return VMState(
            service,
            pid,
            starttime,
            sock,
            dict(data["spec"]),
            str(data["spec_hash"]),
            dict(data["api"]),
            alive,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def inspect(vm_dir: Path) -> VMState | None:
    """Read ``state.json``; ``alive`` says whether its pid is still our VMM.

    None when there is no readable record.
    """
    return _read_state(vm_dir)


def stop(
    target: VMHandle | Path,
    *,
    grace: float = 10.0,
    term_grace: float = 2.0,
) -> None:
    """Stop a VM: Ctrl-Alt-Del, wait, SIGTERM, wait, SIGKILL, reap; then clean up.

    A pid that is no longer our Firecracker (it exited and the pid was reused) is
    never signalled.
    """
    process: subprocess.Popen[bytes] | None = None
    if isinstance(target, VMHandle):
        vm_dir, process = target.vm_dir, target.process
    else:
        vm_dir = Path(target)
    state = _read_state(vm_dir)
    if state is not None and state.alive:
        _shutdown(state, process, grace, term_grace)
    elif process is not None:
        process.poll()  # reap a child that already exited
    for name in (SOCKET_NAME, STATE_NAME):
        (vm_dir / name).unlink(missing_ok=True)


def _shutdown(
    state: VMState,
    process: subprocess.Popen[bytes] | None,
    grace: float,
    term_grace: float,
) -> None:
    pid = state.pid
    try:
        FirecrackerClient(state.socket).action("SendCtrlAltDel")
    except (OSError, FirecrackerAPIError) as exc:
        # A 204 is no proof either: only the process exiting counts.
        log.warning(
            "ctrl-alt-del failed service=%s pid=%s error=%s", state.service, pid, exc
        )
    for sig, wait in ((signal.SIGTERM, term_grace), (signal.SIGKILL, 5.0)):
        if _wait_gone(state, process, grace):
            log.info("vm stopped service=%s pid=%s", state.service, pid)
            return
        if not _is_ours(pid, state.starttime, state.service, state.socket):
            return
        log.warning(
            "vm escalating service=%s pid=%s signal=%s", state.service, pid, sig.name
        )
        os.kill(pid, sig)
        grace = wait
    if not _wait_gone(state, process, grace):
        raise VMError(f"service {state.service}: pid {pid} survived SIGKILL")


def _wait_gone(
    state: VMState, process: subprocess.Popen[bytes] | None, timeout: float
) -> bool:
    """Wait until the VMM exits; reap it when it is our child."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None:
            if process.poll() is not None:
                return True
        else:
            _reap(state.pid)
            if not _is_ours(state.pid, state.starttime, state.service, state.socket):
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def _reap(pid: int) -> None:
    # An adopted VMM is not our child: its parent (or init) reaps it instead.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """Kill a VMM we just started (its own session, so its own group) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """State letter and start time (clock ticks since boot) of a pid."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses; fields follow the last ")".
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def _starttime(pid: int) -> int | None:
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def _is_ours(pid: int, starttime: int, service: str, sock: str) -> bool:
    """Alive, not a zombie, same start time, and started for this service's socket."""
    if pid <= 1:
        return False
    stat = _proc_stat(pid)
    if stat is None or stat[0] in ("Z", "X") or stat[1] != starttime:
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return _has_pair(argv, b"--id", service.encode()) and _has_pair(
        argv, b"--api-sock", sock.encode()
    )


def _has_pair(argv: list[bytes], flag: bytes, value: bytes) -> bool:
    return any(a == flag and b == value for a, b in itertools.pairwise(argv))


def _log_tail(path: Path, limit: int = 500) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-limit:].strip()
