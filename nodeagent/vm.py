"""The Firecracker driver: start, stop and inspect one microVM.

Each VM lives in ``state_dir/vms/<service>/``: the API socket, the VMM's log and
``state.json`` (pid, process start time, socket and the applied spec with its
hash). The VMM runs in its own session so that signals aimed at the agent never
reach it, and the agent can be restarted while VMs keep running.

With a :class:`~nodeagent.jailer.Jailer`, the jailer execs Firecracker in place
inside a chroot: the socket then lives in the jail (``state.json`` keeps its
host path in ``socket`` and the in-jail path from the VMM's argv in
``api_sock``), and stopping the VM removes the jail.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodeagent import procs
from nodeagent.atomicfile import write_atomic
from nodeagent.firecracker import START_TIMEOUT, FirecrackerAPIError, FirecrackerClient
from nodeagent.jailer import API_SOCK, Jailer, JailerError
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
    ``socket`` is where the agent connects, ``api_sock`` the ``--api-sock`` in
    the VMM's argv (they differ only in a jail).
    """

    service: str
    vm_dir: Path
    pid: int
    starttime: int
    socket: str
    api_sock: str
    spec: dict[str, Any]
    spec_hash: str
    api: dict[str, Any]
    process: subprocess.Popen[bytes] | None = None
    jailer: Jailer | None = None


@dataclass(frozen=True)
class VMState:
    """What ``state.json`` records, and whether that VMM is still ours and alive.

    Records written before jailer support have no ``api_sock`` (it equals
    ``socket``) and no ``jailer``.
    """

    service: str
    pid: int
    starttime: int
    socket: str
    api_sock: str
    spec: dict[str, Any]
    spec_hash: str
    api: dict[str, Any]
    jailer: Jailer | None
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
    jailer: Jailer | None = None,
) -> VMHandle:
    """Start a Firecracker for the service, configure it, boot it, record it.

    Pass the service as resolved for the node: its network carries the TAP and
    guest MAC to use. With a ``jailer``, its ``exec_file`` is the Firecracker
    that runs, chrooted, and ``firecracker_bin`` is not used. On any failure the
    process group is killed and reaped, the VM's directory and jail are removed,
    and VMError carries Firecracker's own message.
    """
    name = service.name
    vm_dir = vm_dir_for(state_dir, name)
    sock = str(vm_dir / SOCKET_NAME)
    if jailer is not None:
        with _jail_errors():
            sock = jailer.socket_path(name)
    if len(sock.encode()) > SUN_PATH_MAX:
        raise VMError(f"service {name}: socket path {sock} is longer than 107 bytes")
    if len(boot_args.encode()) + CMDLINE_MARGIN > CMDLINE_MAX:
        raise VMError(f"service {name}: kernel command line is too long")
    api = api_bodies(service, boot_args)
    spec = applied_spec(service, boot_args)
    _check_taps(name, api)
    _prepare_dir(vm_dir, sock)
    if jailer is None:
        # Separate argv tokens: Firecracker's parser does not accept --flag=value.
        argv, api_sock = [firecracker_bin, "--api-sock", sock, "--id", name], sock
    else:
        with _jail_errors():
            api = jailer.prepare(name, api)
        argv, api_sock = jailer.argv(name), API_SOCK
    try:
        process = _spawn(argv, vm_dir)
    except BaseException as exc:
        if jailer is not None:
            jailer.discard(name)
        if isinstance(exc, OSError):
            reason = exc.strerror or str(exc)
            raise VMError(f"service {name}: cannot run {argv[0]}: {reason}") from exc
        raise
    try:
        client = _wait_ready(process, sock, name, vm_dir, socket_timeout)
        _configure(client, api)
        handle = VMHandle(
            service=name,
            vm_dir=vm_dir,
            pid=process.pid,
            starttime=procs.starttime(process.pid) or 0,
            socket=sock,
            api_sock=api_sock,
            spec=spec,
            spec_hash=hash_spec(spec),
            api=api,
            process=process,
            jailer=jailer,
        )
        _write_state(handle)
    except BaseException as exc:
        _kill_group(process)
        shutil.rmtree(vm_dir, ignore_errors=True)
        if jailer is not None:
            jailer.discard(name)
        if isinstance(exc, FirecrackerAPIError):
            raise VMError(f"service {name}: {exc.fault_message}") from exc
        if isinstance(exc, OSError):
            raise VMError(f"service {name}: firecracker api: {exc}") from exc
        raise
    log.info("vm started service=%s pid=%s hash=%s", name, handle.pid, handle.spec_hash)
    return handle


def _check_taps(name: str, api: dict[str, Any]) -> None:
    """Every TAP the VM names exists here, in the agent's network namespace.

    Firecracker running as root would otherwise create a missing TAP itself:
    down, on no bridge, gone when it exits, and the guest boots unreachable.
    """
    for iface in api["network-interfaces"]:
        tap = iface["host_dev_name"]
        try:
            socket.if_nametoindex(tap)
        except OSError:
            raise VMError(
                f"service {name}: network.interface {tap} does not exist on this"
                " node (the agent creates it only with enable_network_setup)"
            ) from None


@contextlib.contextmanager
def _jail_errors() -> Iterator[None]:
    """A failed jail step is a VMError, like every other start or stop failure."""
    try:
        yield
    except JailerError as exc:
        raise VMError(str(exc)) from exc


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


def _spawn(argv: list[str], vm_dir: Path) -> subprocess.Popen[bytes]:
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
        "api_sock": handle.api_sock,
        "spec": handle.spec,
        "spec_hash": handle.spec_hash,
        "api": handle.api,
        "jailer": handle.jailer.record() if handle.jailer else None,
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
        api_sock = str(data.get("api_sock") or sock)
        jail = data.get("jailer")
        return VMState(
            service=service,
            pid=pid,
            starttime=starttime,
            socket=sock,
            api_sock=api_sock,
            spec=dict(data["spec"]),
            spec_hash=str(data["spec_hash"]),
            api=dict(data["api"]),
            jailer=Jailer.from_record(jail) if jail else None,
            alive=procs.is_ours(pid, starttime, service, api_sock),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_running(handle: VMHandle) -> bool:
    """Whether the VMM behind ``handle`` still runs; cheap enough for every tick.

    Our own child is asked through its exit status (which also reaps it); an
    adopted VMM through its pid and start time.
    """
    if handle.process is not None:
        return handle.process.poll() is None
    return procs.same_process(handle.pid, handle.starttime)


def handle_of(state: VMState, state_dir: Path) -> VMHandle:
    """A handle on a VM found on disk (adopted): no child process to wait for."""
    return VMHandle(
        service=state.service,
        vm_dir=vm_dir_for(state_dir, state.service),
        pid=state.pid,
        starttime=state.starttime,
        socket=state.socket,
        api_sock=state.api_sock,
        spec=state.spec,
        spec_hash=state.spec_hash,
        api=state.api,
        jailer=state.jailer,
    )


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
    jailer: Jailer | None = None,
) -> None:
    """Stop a VM: Ctrl-Alt-Del, wait, SIGTERM, wait, SIGKILL, reap; then clean up.

    A pid that is no longer our Firecracker (it exited and the pid was reused) is
    never signalled. A jailed VM's jail is removed once its VMM is gone; the
    jailer recorded at start wins over ``jailer``, which serves a lost record.
    """
    process: subprocess.Popen[bytes] | None = None
    if isinstance(target, VMHandle):
        vm_dir, process = target.vm_dir, target.process
        jailer = target.jailer or jailer
    else:
        vm_dir = Path(target)
    state = _read_state(vm_dir)
    if state is not None and state.alive:
        _shutdown(state, process, grace, term_grace)
    elif process is not None:
        process.poll()  # reap a child that already exited
    jailer = state.jailer if state is not None else jailer
    if jailer is not None:
        with _jail_errors():
            jailer.remove(vm_dir.name)  # the jail id is the service name
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
        if not procs.is_ours(pid, state.starttime, state.service, state.api_sock):
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
            procs.reap(state.pid)
            if not procs.is_ours(
                state.pid, state.starttime, state.service, state.api_sock
            ):
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """Kill a VMM we just started (its own session, so its own group) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _log_tail(path: Path, limit: int = 500) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-limit:].strip()
