"""Adoption: a starting agent re-attaches to the VMs that outlived its last run.

:func:`scan` looks at every ``state_dir/vms/<service>/`` and classifies what it
finds; :func:`adopt` then keeps the VMs that are ours, answer and match the
desired spec, stops the rest, and cleans up records nothing runs behind.

A pid is only ever signalled (through :func:`nodeagent.vm.stop`) after the
driver's identity checks pass: alive, same start time, and an argv with this
service's ``--id`` and ``--api-sock``. A record whose pid now belongs to someone
else is discarded without touching that process.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nodeagent import procs, vm
from nodeagent.firecracker import FirecrackerAPIError, FirecrackerClient
from nodeagent.reconcile import RunningVM

log = logging.getLogger(__name__)

# GETs to a healthy VMM answer in milliseconds; a VMM that needs longer than this
# at agent start is treated as hung rather than stalling every other service.
API_TIMEOUT = 0.5

Kind = Literal["adoptable", "dead", "foreign", "unresponsive", "broken"]


@dataclass(frozen=True)
class Found:
    """One VM directory as :func:`scan` found it.

    ``code`` is a stable machine-readable reason (``ok``, ``process_gone``,
    ``pid_reused``, ``api_timeout`` ...), ``detail`` the human text. ``drift``
    lists the recorded settings that the live ``GET /vm/config`` contradicts.
    """

    service: str
    vm_dir: Path
    kind: Kind
    code: str
    detail: str
    state: vm.VMState | None = None
    instance: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    drift: tuple[str, ...] = ()

    @property
    def pid(self) -> int | None:
        """The recorded pid, when there is a readable record."""
        return self.state.pid if self.state else None


@dataclass(frozen=True)
class Outcome:
    """What :func:`adopt` did to one VM directory, and why."""

    service: str
    code: str
    detail: str
    pid: int | None = None


@dataclass
class AdoptionReport:
    """The result of :func:`adopt`, for the reconciler, the logs and the status.

    ``adopted`` feeds the reconciler as actual state. ``stopped`` VMs and
    ``cleaned`` directories need a fresh start if still desired. ``left`` holds
    what was deliberately not touched (a live VMM without a usable record), and
    ``failed`` what could not be stopped.
    """

    adopted: list[RunningVM] = field(default_factory=list)
    stopped: list[Outcome] = field(default_factory=list)
    cleaned: list[Outcome] = field(default_factory=list)
    left: list[Outcome] = field(default_factory=list)
    failed: list[Outcome] = field(default_factory=list)


def scan(state_dir: Path, api_timeout: float = API_TIMEOUT) -> list[Found]:
    """Classify every ``state_dir/vms/<service>/`` directory; never raises for one."""
    base = Path(state_dir) / "vms"
    try:
        entries = sorted(p for p in base.iterdir() if p.is_dir())
    except FileNotFoundError:
        return []
    found = []
    for vm_dir in entries:
        try:
            found.append(_classify(vm_dir, api_timeout))
        except Exception as exc:  # one odd directory must not stop adoption
            log.exception("scan failed service=%s", vm_dir.name)
            found.append(Found(vm_dir.name, vm_dir, "broken", "scan_error", str(exc)))
    return found


def _classify(vm_dir: Path, api_timeout: float) -> Found:
    name = vm_dir.name
    try:
        vm.vm_dir_for(vm_dir.parent.parent, name)
    except vm.VMError as exc:
        return Found(name, vm_dir, "broken", "bad_name", str(exc))
    state = vm.inspect(vm_dir)
    if state is None:
        return _without_record(vm_dir, api_timeout)
    if state.service != name:
        detail = f"service {name}: state.json names service {state.service}"
        return Found(name, vm_dir, "broken", "name_mismatch", detail, state)
    if not state.alive:
        if procs.exists(state.pid):
            detail = f"service {name}: pid {state.pid} is not our firecracker"
            return Found(name, vm_dir, "foreign", "pid_reused", detail, state)
        detail = f"service {name}: pid {state.pid} is gone"
        return Found(name, vm_dir, "dead", "process_gone", detail, state)
    return _ask_api(vm_dir, state, api_timeout)


def _without_record(vm_dir: Path, api_timeout: float) -> Found:
    """No readable state.json: a crash mid-start, a stray socket, or junk."""
    name = vm_dir.name
    has_state = (vm_dir / vm.STATE_NAME).exists()
    code = "bad_state" if has_state else "no_state"
    detail = f"service {name}: state.json is unreadable" if has_state else ""
    sock = vm_dir / vm.SOCKET_NAME
    if sock.exists():
        try:
            info = FirecrackerClient(str(sock), timeout=api_timeout).instance_info()
        except (OSError, FirecrackerAPIError):
            info = None
        if info is not None:
            # Without a record we cannot prove which pid it is, so it may not be
            # signalled, and unlinking its socket would orphan it.
            detail = f"service {name}: a firecracker answers on {sock} with no record"
            return Found(name, vm_dir, "broken", "unrecorded_vmm", detail, None, info)
        code = code if has_state else "stray_socket"
    return Found(name, vm_dir, "broken", code, detail or f"service {name}: {code}")


def _ask_api(vm_dir: Path, state: vm.VMState, api_timeout: float) -> Found:
    """Alive and ours by pid: it must also answer as this service, running."""
    name = vm_dir.name

    def unresponsive(code: str, detail: str) -> Found:
        return Found(
            name, vm_dir, "unresponsive", code, f"service {name}: {detail}", state
        )

    try:
        peer = _peer_pid(state.socket, api_timeout)
        # Ask nothing of a socket someone else serves: its answers prove nothing.
        if peer != state.pid:
            return unresponsive("socket_not_ours", f"socket is served by pid {peer}")
        client = FirecrackerClient(state.socket, timeout=api_timeout)
        info = client.instance_info()
        config = client.get("/vm/config")
    except TimeoutError:
        return unresponsive("api_timeout", f"api did not answer in {api_timeout}s")
    except (OSError, FirecrackerAPIError) as exc:
        return unresponsive("api_error", f"api: {exc}")
    if info.get("id") != name:
        return unresponsive("id_mismatch", f"api reports id {info.get('id')!r}")
    if info.get("state") != "Running":
        return unresponsive("not_running", f"api reports state {info.get('state')!r}")
    if not isinstance(config, dict):
        return unresponsive("api_error", "vm config is not an object")
    drift = tuple(_drift(state.api, config))
    return Found(name, vm_dir, "adoptable", "ok", "", state, info, config, drift)


def adopt(
    state_dir: Path,
    desired_specs: Mapping[str, str],
    *,
    keep: Collection[str] = (),
    api_timeout: float = API_TIMEOUT,
    grace: float = 10.0,
    term_grace: float = 2.0,
) -> AdoptionReport:
    """Re-attach to running VMs whose spec hash is the desired one; settle the rest.

    ``desired_specs`` maps service name to the hash of the spec it would be
    started with (:func:`nodeagent.reconcile.spec_hash` with its boot args).
    Adopted VMs keep running untouched. ``keep`` names desired services whose
    spec cannot be computed now (say, a link that does not resolve): a live,
    answering VM of theirs is adopted as it is rather than stopped. Changed,
    drifted, unresponsive and undesired VMs are stopped; dead, broken and
    foreign records are removed (logs stay). Never raises for a single VM:
    failures land in ``failed``.
    """
    report = AdoptionReport()
    for found in scan(state_dir, api_timeout):
        if found.kind in ("adoptable", "unresponsive"):
            _settle_live(found, desired_specs, keep, report, grace, term_grace)
        elif found.code in ("unrecorded_vmm", "name_mismatch") and _may_be_live(found):
            report.left.append(_outcome(found))
            log.warning("vm left service=%s code=%s", found.service, found.code)
        else:
            _clean(found.vm_dir)
            report.cleaned.append(_outcome(found))
            log.info(
                "vm record cleaned service=%s pid=%s code=%s",
                found.service,
                found.pid,
                found.code,
            )
    return report


def _settle_live(
    found: Found,
    desired_specs: Mapping[str, str],
    keep: Collection[str],
    report: AdoptionReport,
    grace: float,
    term_grace: float,
) -> None:
    assert found.state is not None  # live kinds always carry their record
    state = found.state
    desired = desired_specs.get(found.service)
    if found.service in keep and found.kind == "adoptable":
        desired = state.spec_hash
    if found.kind == "unresponsive":
        outcome = _outcome(found)
    elif desired is None:
        outcome = Outcome(
            found.service,
            "not_desired",
            f"service {found.service}: not in the desired state",
            state.pid,
        )
    elif desired != state.spec_hash:
        detail = (
            f"service {found.service}: spec changed: "
            f"running {state.spec_hash[:12]}, desired {desired[:12]}"
        )
        outcome = Outcome(found.service, "spec_changed", detail, state.pid)
    elif found.drift:
        detail = f"service {found.service}: running config differs in " + ", ".join(
            found.drift
        )
        outcome = Outcome(found.service, "config_drift", detail, state.pid)
    else:
        report.adopted.append(
            RunningVM(found.service, state.spec_hash, True, state.pid, state.spec)
        )
        log.info("vm adopted service=%s pid=%s", found.service, state.pid)
        return
    try:
        vm.stop(found.vm_dir, grace=grace, term_grace=term_grace)
    except (vm.VMError, OSError) as exc:
        report.failed.append(Outcome(found.service, "stop_failed", str(exc), state.pid))
        log.error(
            "vm stop failed service=%s pid=%s error=%s", found.service, state.pid, exc
        )
        return
    report.stopped.append(outcome)
    log.info(
        "vm stopped service=%s pid=%s code=%s", found.service, state.pid, outcome.code
    )


def _may_be_live(found: Found) -> bool:
    if found.code == "unrecorded_vmm":
        return True
    return found.state is not None and found.state.alive


def _outcome(found: Found) -> Outcome:
    return Outcome(found.service, found.code, found.detail, found.pid)


def _clean(vm_dir: Path) -> None:
    """Drop what would confuse the next start; the VMM's log stays for post-mortems."""
    names = [vm.SOCKET_NAME, vm.STATE_NAME]
    # temp files of a state write a crash interrupted
    names += [p.name for p in vm_dir.glob(f".{vm.STATE_NAME}.*.tmp")]
    for name in names:
        try:
            (vm_dir / name).unlink(missing_ok=True)
        except IsADirectoryError:
            log.warning("vm clean skipped service=%s path=%s", vm_dir.name, name)


def _peer_pid(sock_path: str, timeout: float) -> int:
    """The pid serving a Unix socket, as the kernel recorded it at listen time."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(sock_path)
        creds = sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
        )
    pid, _uid, _gid = struct.unpack("3i", creds)
    return int(pid)


def _drift(recorded: Mapping[str, Any], live: Mapping[str, Any]) -> list[str]:
    """Recorded settings the running VMM does not report back.

    Only what the driver set is compared: Firecracker fills in defaults (cache
    type, rate limiters, nulls) that were never part of the spec.
    """
    changed = []
    for section, wanted in recorded.items():
        if not _contains(live.get(section), wanted):
            changed.append(section)
    return changed


def _contains(live: Any, wanted: Any, key: str = "") -> bool:
    if isinstance(wanted, dict):
        return isinstance(live, dict) and all(
            _contains(live.get(k), v, k) for k, v in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(live, list)
            and len(live) == len(wanted)
            and all(_contains(a, b) for a, b in zip(live, wanted, strict=True))
        )
    if key == "guest_mac" and isinstance(wanted, str) and isinstance(live, str):
        # Firecracker reports MAC addresses in lower case whatever was sent.
        return live.lower() == wanted.lower()
    return bool(live == wanted)


__all__ = ["API_TIMEOUT", "AdoptionReport", "Found", "Outcome", "adopt", "scan"]


def recorded_addresses(state_dir: Path) -> dict[str, str]:
    """The guest IP recorded for each VM under ``state_dir``, by service.

    What the node's VMs have now, so that resolving a new config keeps them
    (see :func:`nodeagent.addressing.assign_addresses`).
    """
    found: dict[str, str] = {}
    try:
        vm_dirs = [p for p in (Path(state_dir) / "vms").iterdir() if p.is_dir()]
    except OSError:
        return found
    for vm_dir in vm_dirs:
        state = vm.inspect(vm_dir)
        ip = guest_ip_of(state.spec) if state is not None else None
        if state is not None and ip is not None:
            found[state.service] = ip
    return found


def guest_ip_of(spec: dict[str, Any]) -> str | None:
    """The guest IP an applied spec records, if it has a network."""
    network = spec.get("network")
    ip = network.get("guest_ip") if isinstance(network, dict) else None
    return ip if isinstance(ip, str) else None
