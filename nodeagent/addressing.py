"""Deterministic guest IPs and MACs for the networked services of one node.

Pure: the same services, subnet and kept addresses always give the same
addresses, whatever the order of the input. Addresses pinned in hand-written
configs come first; then a service keeps the address its VM already has (so
adding or removing another service never renumbers, and so never restarts, the
rest); the others, sorted by name, take host addresses of the subnet from the
first one upward, skipping the gateway and every address taken. A guest's MAC
is derived from its IP (``AA:FC`` and the four address bytes), so two guests
share a MAC only if they share an IP, which never happens. Services that do not
fit get an error instead of an address.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from nodeagent.spec.node import ServiceConfig

# 0xAA has the locally-administered bit set and the multicast bit clear, so a
# derived MAC never clashes with a vendor-assigned one and is always unicast.
MAC_PREFIX = (0xAA, 0xFC)
# Longer prefixes leave no address besides the network and broadcast ones.
MAX_PREFIX_WITH_HOSTS = 30


@dataclass(frozen=True)
class Assigned:
    """The network identity of one guest."""

    tap: str
    ip: str
    mac: str
    prefix_len: int
    netmask: str
    gateway: str


@dataclass(frozen=True)
class Addressing:
    """Addresses per service name, and an error for each service left without."""

    assigned: dict[str, Assigned] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def derived_mac(ip: IPv4Address) -> str:
    """The MAC of a guest without a pinned one: ``AA:FC`` and the IP's bytes."""
    return ":".join(f"{b:02X}" for b in (*MAC_PREFIX, *ip.packed))


def assign_addresses(
    services: Iterable[ServiceConfig],
    subnet: str,
    gateway: str,
    keep: Mapping[str, str] | None = None,
) -> Addressing:
    """Assign a guest IP and MAC to every networked service, or say why not.

    ``keep`` maps a service to the IP its VM has now; a service without a pinned
    address keeps it while it is still a free host address of ``subnet``.
    Raises ``ValueError`` when ``subnet`` or ``gateway`` is invalid: that is a
    config error of the whole node, not of one service.
    """
    net, gw = _parse(subnet, gateway)
    networked = sorted((s for s in services if s.network), key=lambda s: s.name)
    plan = _Plan(net, gw)
    # Pinned addresses first, so neither a kept nor an automatic one takes them.
    for service in networked:
        plan.reserve_pinned(service)
    for service in networked:
        if service.name not in plan.errors:
            plan.reserve_kept(service, (keep or {}).get(service.name))
    for service in networked:
        if service.name not in plan.errors:
            plan.assign(service)
    return Addressing(assigned=plan.assigned, errors=plan.errors)


def _parse(subnet: str, gateway: str) -> tuple[IPv4Network, IPv4Address]:
    try:
        net = IPv4Network(subnet)
        gw = IPv4Address(gateway)
    except ValueError as exc:
        raise ValueError(f"vm_subnet/vm_gateway: {exc}") from None
    # A /31 or /32 has no host address at all; its services each get an error.
    has_room = net.prefixlen <= MAX_PREFIX_WITH_HOSTS
    if gw not in net or (has_room and not _is_host(net, gw)):
        raise ValueError(f"vm_gateway: {gw} is not a host address of {net}")
    return net, gw


def _is_host(net: IPv4Network, ip: IPv4Address) -> bool:
    """Whether ``ip`` may be used by a host: not the network or broadcast address."""
    return net.network_address < ip < net.broadcast_address


class _Plan:
    """The addresses taken so far while assigning one node's services."""

    def __init__(self, net: IPv4Network, gateway: IPv4Address) -> None:
        self.net = net
        self.gateway = gateway
        self.ip_owner: dict[IPv4Address, str] = {gateway: "the gateway"}
        self.mac_owner: dict[str, str] = {}
        self.assigned: dict[str, Assigned] = {}
        self.errors: dict[str, str] = {}
        self.kept: dict[str, IPv4Address] = {}
        # Candidates only move upward, so assigning n services costs O(n).
        self._candidates = self._hosts()
        # Hosts minus the gateway; the count in the exhaustion message.
        self.capacity = max(net.num_addresses - 3, 0)

    def _hosts(self) -> Iterator[IPv4Address]:
        first = int(self.net.network_address) + 1
        last = int(self.net.broadcast_address) - 1
        # Counting integers, not net.hosts(): a /8 has 16 million of them.
        return (IPv4Address(i) for i in range(first, last + 1))

    def reserve_pinned(self, service: ServiceConfig) -> None:
        """Check and reserve the IP and MAC a hand-written config pins."""
        assert service.network is not None
        problems: list[str] = []
        ip = service.network.guest_ip
        if ip is not None:
            problems += self._ip_problems(service.name, IPv4Address(ip))
        mac = service.network.guest_mac
        if mac is not None and self.mac_owner.get(mac, service.name) != service.name:
            problems.append(
                f"network.guest_mac {mac} is also used by service {self.mac_owner[mac]}"
            )
        if problems:
            self.errors[service.name] = f"service {service.name}: " + "; ".join(
                problems
            )
            return
        if ip is not None:
            self.ip_owner[IPv4Address(ip)] = service.name
        if mac is not None:
            self.mac_owner[mac] = service.name

    def reserve_kept(self, service: ServiceConfig, current: str | None) -> None:
        """Hold the address the service's VM has now, when it may keep it."""
        assert service.network is not None
        if current is None or service.network.guest_ip is not None:
            return
        try:
            ip = IPv4Address(current)
        except ValueError:
            return  # a record from elsewhere: assign afresh
        mac = service.network.guest_mac or derived_mac(ip)
        if self._ip_problems(service.name, ip) or ip in self.ip_owner:
            return
        if self.mac_owner.get(mac, service.name) != service.name:
            return
        self.ip_owner[ip] = service.name
        self.kept[service.name] = ip

    def _ip_problems(self, name: str, ip: IPv4Address) -> list[str]:
        where = f"network.guest_ip {ip}"
        if ip not in self.net:
            return [f"{where} is outside {self.net}"]
        if not _is_host(self.net, ip):
            return [f"{where} is not a host address of {self.net}"]
        owner = self.ip_owner.get(ip, name)
        if owner != name:
            who = owner if owner == "the gateway" else f"service {owner}"
            return [f"{where} is also used by {who}"]
        return []

    def assign(self, service: ServiceConfig) -> None:
        """Give ``service`` its pinned or the next free IP, and a MAC."""
        assert service.network is not None
        name, pinned_mac = service.name, service.network.guest_mac
        if service.network.guest_ip is not None:
            ip: IPv4Address | None = IPv4Address(service.network.guest_ip)
        elif name in self.kept:
            ip = self.kept[name]
        else:
            ip = self._next_free(name, needs_mac=pinned_mac is None)
        if ip is None:
            n = self.capacity
            fits = "1 service fits" if n == 1 else f"{n} services fit"
            self.errors[name] = (
                f"service {name}: no free address in {self.net} ({fits})"
            )
            return
        mac = pinned_mac or derived_mac(ip)
        owner = self.mac_owner.get(mac, name)
        if owner != name:
            # Only possible when another config pins exactly this derived MAC.
            self.errors[name] = (
                f"service {name}: MAC {mac} derived from {ip} is the "
                f"network.guest_mac of service {owner}"
            )
            return
        self.ip_owner[ip] = name
        self.mac_owner[mac] = name
        self.assigned[name] = Assigned(
            tap=service.network.interface,
            ip=str(ip),
            mac=mac,
            prefix_len=self.net.prefixlen,
            netmask=str(self.net.netmask),
            gateway=str(self.gateway),
        )

    def _next_free(self, name: str, *, needs_mac: bool) -> IPv4Address | None:
        for ip in self._candidates:
            if ip in self.ip_owner:
                continue
            if needs_mac and derived_mac(ip) in self.mac_owner:
                # A pinned MAC equal to this IP's derived one: skip the IP, so
                # the MAC of an automatic guest always follows from its IP.
                continue
            return ip
        return None
