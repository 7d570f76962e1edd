"""From the node config to exactly what each VM is started with.

Pure: :func:`resolve` assigns guest addresses, turns links into env values and
builds each kernel command line, for the agent loop and ``firework-agent plan``
alike, so what the plan shows is what the agent runs. A service that cannot be
resolved (no free address, a broken link, a command line too long) gets an error
instead; the others are unaffected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nodeagent.addressing import Assigned, assign_addresses
from nodeagent.kernelargs import build_kernel_args, resolve_links
from nodeagent.reconcile import hash_spec, vm_spec
from nodeagent.spec.node import Network, ServiceConfig


@dataclass(frozen=True)
class Prepared:
    """One service as it will run on this node.

    ``service`` has its network filled in (TAP, guest MAC and IP); ``spec`` is
    the applied spec the driver records and ``spec_hash`` its hash.
    """

    service: ServiceConfig
    boot_args: str
    env: dict[str, str]
    assigned: Assigned | None
    spec: dict[str, Any]
    spec_hash: str

    @property
    def name(self) -> str:
        """The service name."""
        return self.service.name

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, for ``firework-agent plan``."""
        net = self.assigned
        return {
            "name": self.name,
            "tap": net.tap if net else None,
            "guest_ip": net.ip if net else None,
            "guest_mac": net.mac if net else None,
            "gateway": net.gateway if net else None,
            "kernel_args": self.boot_args,
            "env": dict(sorted(self.env.items())),
            "port_forwards": [
                pf.model_dump(mode="json") for pf in self.service.port_forwards
            ],
            "vcpus": self.service.vcpus,
            "memory_mb": self.service.memory_mb,
            "image": self.service.image,
            "kernel": self.service.kernel,
            "initrd": self.service.initrd,
            "spec_hash": self.spec_hash,
        }


@dataclass(frozen=True)
class Resolved:
    """Every service of the node: prepared, or the reason it cannot run."""

    prepared: dict[str, Prepared] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def resolve(
    services: Sequence[ServiceConfig],
    subnet: str,
    gateway: str,
    keep: Mapping[str, str] | None = None,
) -> Resolved:
    """Prepare every service of the node for ``subnet`` with ``gateway``.

    ``keep``: the guest IP each service's VM has now (see
    :func:`~nodeagent.addressing.assign_addresses`). Raises ``ValueError`` only
    for a bad subnet or gateway, which the agent config validation refuses.
    """
    addressing = assign_addresses(services, subnet, gateway, keep)
    envs, link_errors = resolve_links(services, addressing)
    shared = shared_images(services)
    prepared: dict[str, Prepared] = {}
    errors: dict[str, str] = {}
    for service in services:
        name = service.name
        error = shared.get(name) or addressing.errors.get(name) or link_errors.get(name)
        if error:
            errors[name] = error
            continue
        assigned = addressing.assigned.get(name)
        try:
            boot_args = build_kernel_args(
                service.kernel_args, assigned, envs[name], service=name
            )
        except ValueError as exc:
            errors[name] = str(exc)
            continue
        resolved = _with_address(service, assigned)
        spec = vm_spec(resolved, boot_args)
        prepared[name] = Prepared(
            resolved, boot_args, envs[name], assigned, spec, hash_spec(spec)
        )
    return Resolved(prepared, errors)


def shared_images(services: Sequence[ServiceConfig]) -> dict[str, str]:
    """Services whose root drive image an earlier service (by name) already has.

    Every VM gets its image as a read-write root drive; two guests mounting one
    ext4 image corrupt it. The first service by name keeps the image, each other
    one gets an error naming it (and keeps a VM it already runs).
    """
    owners: dict[str, str] = {}
    errors: dict[str, str] = {}
    for service in sorted(services, key=lambda s: s.name):
        owner = owners.setdefault(service.image, service.name)
        if owner != service.name:
            errors[service.name] = (
                f"image {service.image} is already the root drive of service "
                f"{owner}: two VMs writing one image corrupt it, give each "
                "service an image of its own"
            )
    return errors


def _with_address(service: ServiceConfig, assigned: Assigned | None) -> ServiceConfig:
    if assigned is None:
        return service
    network = Network(
        interface=assigned.tap, guest_mac=assigned.mac, guest_ip=assigned.ip
    )
    return service.model_copy(update={"network": network})
