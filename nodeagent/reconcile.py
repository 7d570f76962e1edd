"""The reconciler's plan: what to create, remove or recreate so actual meets desired.

:func:`plan` is pure (no I/O, no clock) and cheap, so the agent runs it on every
tick: a VM that crashed is recreated even when the config revision did not change.
:func:`run_actions` then carries the plan out with bounded parallelism.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from nodeagent.spec.node import ServiceConfig

# Fields that shape the VM itself, in the order reasons list them. env and links
# end up on the kernel command line, so changing them needs a new boot.
VM_FIELDS = (
    "image",
    "kernel",
    "initrd",
    "vcpus",
    "memory_mb",
    "kernel_args",
    "network",
    "env",
    "links",
)
# Fields the agent applies outside the VM: the health monitor and host NAT rules.
MONITOR_FIELDS = ("health_check", "metadata", "port_forwards")
# The key of the full kernel command line in an applied spec.
BOOT_ARGS = "boot_args"
# Network parts change for different reasons (a renamed TAP, a shifted address),
# so reasons name the part; elsewhere the field name says enough.
_SPLIT = frozenset({"network"})

ActionKind = Literal["create", "remove", "recreate"]
Named = TypeVar("Named", ServiceConfig, "RunningVM")


def vm_spec(service: ServiceConfig, boot_args: str | None = None) -> dict[str, Any]:
    """The part of ``service`` that a running VM cannot change without a restart.

    That is the image, kernel, initrd, vCPUs, memory, kernel args, network (TAP,
    guest MAC and IP), env and links: env and links are passed on the kernel
    command line, so the guest only sees new values after a new boot.

    Health check, metadata and port forwards are left out on purpose: the health
    monitor and the host's NAT rules apply them while the VM keeps running, so
    changing them must never restart a service (see :func:`monitor_spec`).

    The result is plain JSON data; the driver records it as the applied spec.
    Pass services as resolved for the node (guest IP and MAC assigned): an
    address that moves then shows up here as a change. ``boot_args``, the full
    kernel command line built from them, is added when given: it also carries
    what the node adds (gateway, netmask, resolved links).
    """
    data = service.model_dump(mode="json", include=set(VM_FIELDS))
    spec = {name: data[name] for name in VM_FIELDS}
    if boot_args is not None:
        spec[BOOT_ARGS] = boot_args
    return spec


def monitor_spec(service: ServiceConfig) -> dict[str, Any]:
    """The part of ``service`` applied around the VM: health check, metadata, NAT."""
    data = service.model_dump(mode="json", include=set(MONITOR_FIELDS))
    return {name: data[name] for name in MONITOR_FIELDS}


def canonical_json(data: Any) -> str:
    """One spelling of ``data``: sorted keys, no spaces, ASCII only."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def spec_hash(service: ServiceConfig, boot_args: str | None = None) -> str:
    """sha256 (hex) of the canonical JSON of :func:`vm_spec`.

    Stable across runs and Python versions: it depends only on the values, never
    on dict order or on ``hash()`` randomisation. This is the one hash the agent
    uses: the driver records it, adoption and the planner compare it.
    """
    return hash_spec(vm_spec(service, boot_args))


def hash_spec(spec: Mapping[str, Any]) -> str:
    """sha256 (hex) of an applied spec as :func:`vm_spec` returns it."""
    return hashlib.sha256(canonical_json(spec).encode("ascii")).hexdigest()


@dataclass(frozen=True)
class RunningVM:
    """A VM the driver found on the host (actual state).

    ``applied`` is the :func:`vm_spec` recorded when the VM was started, when the
    record is readable; ``spec_hash`` is its hash.
    """

    name: str
    spec_hash: str
    alive: bool
    pid: int | None
    applied: dict[str, Any] | None


@dataclass(frozen=True)
class Action:
    """One step of a plan; ``fields`` names the VM fields that changed."""

    kind: ActionKind
    service: str
    reason: str
    fields: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, for ``firework-agent plan`` and status."""
        return _entry_dict(self)


@dataclass(frozen=True)
class MonitorUpdate:
    """A running VM whose health check, metadata or port forwards changed."""

    service: str
    fields: tuple[str, ...]
    reason: str
    kind: Literal["update"] = "update"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, for ``firework-agent plan`` and status."""
        return _entry_dict(self)


def _entry_dict(entry: Action | MonitorUpdate) -> dict[str, Any]:
    return {
        "kind": entry.kind,
        "service": entry.service,
        "reason": entry.reason,
        "fields": list(entry.fields),
    }


@dataclass(frozen=True)
class Plan:
    """VM actions in execution order, then updates that need no restart."""

    actions: tuple[Action, ...] = ()
    monitor_updates: tuple[MonitorUpdate, ...] = ()

    @property
    def empty(self) -> bool:
        """True when actual state already matches desired state."""
        return not self.actions and not self.monitor_updates


# Removes free TAPs, guest IPs and host ports that recreates and creates may take.
_PHASES: tuple[ActionKind, ...] = ("remove", "recreate", "create")


def plan(
    desired: Sequence[ServiceConfig],
    actual: Sequence[RunningVM],
    *,
    monitored: Mapping[str, Mapping[str, Any]] | None = None,
    specs: Mapping[str, Mapping[str, Any]] | None = None,
) -> Plan:
    """Compare desired services with the VMs found on the host.

    A VM with no desired service is removed, a desired service with no VM is
    created, and a VM that is dead or whose VM fields changed is recreated. The
    changed fields come from the VM's ``applied`` record when there is one, else
    only the hash is compared (reason ``spec changed``).

    ``monitored`` maps a service to the :func:`monitor_spec` the monitor and NAT
    currently apply; when given, running VMs whose monitor fields differ (or that
    are not monitored yet, e.g. just adopted) get a :class:`MonitorUpdate`. A
    created or recreated service is set up in full by its action instead, and a
    removed one takes its monitor and NAT rules with it.

    ``specs`` maps a desired service to the applied spec it would be started
    with (default: :func:`vm_spec` of the service alone); the agent passes the
    spec with the node's kernel command line, the same one the driver records.

    Actions come removes first, then recreates, then creates, each by name.
    """
    wanted = _by_name(desired, "desired")
    found = _by_name(actual, "actual")
    actions: list[Action] = []
    updates: list[MonitorUpdate] = []
    for name in sorted(found.keys() - wanted.keys()):
        actions.append(Action("remove", name, "removed from config"))
    for name in sorted(wanted):
        vm = found.get(name)
        if vm is None:
            actions.append(Action("create", name, "new service"))
            continue
        spec = specs[name] if specs is not None else vm_spec(wanted[name])
        action = _compare_vm(name, spec, vm)
        if action is not None:
            actions.append(action)
        elif monitored is not None:
            update = _compare_monitor(wanted[name], monitored.get(name))
            if update is not None:
                updates.append(update)
    actions.sort(key=lambda a: (_PHASES.index(a.kind), a.service))
    return Plan(tuple(actions), tuple(updates))


def _by_name(items: Iterable[Named], what: str) -> dict[str, Named]:
    out: dict[str, Named] = {}
    for item in items:
        if item.name in out:
            raise ValueError(f"service {item.name}: listed twice in {what} state")
        out[item.name] = item
    return out


def _compare_vm(name: str, spec: Mapping[str, Any], vm: RunningVM) -> Action | None:
    """The recreate ``vm`` needs to match the desired ``spec``, if any."""
    changed: tuple[str, ...] = ()
    if vm.applied is not None:
        changed = changed_fields(vm.applied, spec)
    elif vm.spec_hash != hash_spec(spec) and vm.alive:
        # Without the record we know that something changed, not what.
        return Action("recreate", name, "spec changed")
    # The command line follows from the fields; name it only when nothing else
    # explains the change (a moved gateway, say).
    if len(changed) > 1:
        changed = tuple(f for f in changed if f != BOOT_ARGS)
    if not vm.alive:
        return Action("recreate", name, "not running", changed)
    if changed:
        return Action("recreate", name, _reason(changed), changed)
    return None


def _compare_monitor(
    service: ServiceConfig, current: Mapping[str, Any] | None
) -> MonitorUpdate | None:
    if current is None:
        return MonitorUpdate(service.name, MONITOR_FIELDS, "not monitored")
    changed = changed_fields(current, monitor_spec(service))
    if changed:
        return MonitorUpdate(service.name, changed, _reason(changed))
    return None


def changed_fields(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[str, ...]:
    """Top-level keys whose values differ; network changes as ``network.guest_ip``.

    Keys come in ``new``'s order, then keys only ``old`` has, sorted (a record
    written by another agent version may have fields this one does not know).
    """
    keys = [*new, *sorted(old.keys() - new.keys())]
    out: list[str] = []
    for key in keys:
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        if key in _SPLIT and isinstance(before, Mapping) and isinstance(after, Mapping):
            out.extend(f"{key}.{sub}" for sub in changed_fields(before, after))
        else:
            out.append(key)
    return tuple(out)


def _reason(fields: Sequence[str]) -> str:
    return f"{', '.join(fields)} changed"


@dataclass(frozen=True)
class ActionResult:
    """How one action went: ``error`` is None when it succeeded."""

    action: Action
    error: Exception | None = field(default=None)

    @property
    def ok(self) -> bool:
        """True when the action raised nothing."""
        return self.error is None


def run_actions(
    actions: Sequence[Action],
    execute: Callable[[Action], None],
    *,
    parallelism: int = 4,
) -> list[ActionResult]:
    """Run ``actions`` with at most ``parallelism`` at a time; results in order.

    Removes run first, then recreates, then creates, with a barrier between
    phases: a new VM must not race a remove for the TAP, guest IP or host port
    that the remove frees. A failing action is recorded and the others still
    run; the next tick's plan retries it.

    Recreates in one phase may still swap resources among themselves (a guest IP
    moving to a service being recreated too), so the driver must release a VM's
    TAP and NAT rules before it configures new ones.
    """
    if parallelism < 1:
        raise ValueError(f"parallelism must be at least 1, got {parallelism}")
    results: dict[int, ActionResult] = {}
    with ThreadPoolExecutor(max_workers=parallelism) as pool:
        for kind in _PHASES:
            phase = [(i, a) for i, a in enumerate(actions) if a.kind == kind]
            # Waiting on every future of the phase is the barrier.
            done = pool.map(lambda item: (item[0], _attempt(execute, item[1])), phase)
            results.update(done)
    return [results[i] for i in range(len(actions))]


def _attempt(execute: Callable[[Action], None], action: Action) -> ActionResult:
    try:
        execute(action)
    except Exception as exc:  # one failure must not stop the other actions
        return ActionResult(action, exc)
    return ActionResult(action)
