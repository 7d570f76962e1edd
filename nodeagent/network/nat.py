"""The node agent's own iptables chains: port forwards, links and the metadata block.

The agent never edits the built-in chains beyond one jump ("hook") into each of its
own chains, so its rules can be replaced wholesale, read back and removed without
touching anybody else's:

- nat ``FIREWORK-PREROUTING`` and ``FIREWORK-OUTPUT``: DNAT of a host port to a
  guest, for connections from outside and from the host itself;
- nat ``FIREWORK-POSTROUTING``: masquerading of host-local connections that were
  DNATed to a guest, and of guest traffic leaving through the uplink;
- filter ``FIREWORK-FORWARD``: what may cross the bridge (forwards, links, egress);
- filter ``FIREWORK-INPUT``: guests may not reach a metadata service on the host,
  and under link isolation nothing on the host at all.

:func:`build_rules` is pure: equal inputs give equal text, ordered by service and
port, so a plan can show it and :meth:`Iptables.current` can be compared with it to
detect drift (the generated lines are in the canonical form ``iptables-save``
prints). :class:`Iptables` applies a ruleset with one ``iptables-restore
--noflush`` per table, so each chain changes atomically.

The rules rely on sysctls the host network setup writes, not this module:
``net.ipv4.ip_forward=1`` (routing to and from guests at all) and
``net.ipv4.conf.all.route_localnet=1`` (a host connection to ``127.0.0.1:<port>``
may be DNATed to a guest). Link isolation also needs
``net.bridge.bridge-nf-call-iptables=1`` (set by the agent under link isolation,
see :meth:`~nodeagent.network.host.HostNetwork.ensure_bridge_filtering`), or
guest-to-guest frames bypass ``FIREWORK-FORWARD``.
"""

from __future__ import annotations

import ipaddress
import logging
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from nodeagent.spec.fields import DNS_LABEL, IFACE

log = logging.getLogger(__name__)

Isolation = Literal["none", "links"]
ISOLATIONS: tuple[Isolation, ...] = ("none", "links")

PREROUTING = "FIREWORK-PREROUTING"
OUTPUT = "FIREWORK-OUTPUT"
POSTROUTING = "FIREWORK-POSTROUTING"
FORWARD = "FIREWORK-FORWARD"
INPUT = "FIREWORK-INPUT"
# Per table, in the order rules are generated and read back.
CHAINS: dict[str, tuple[str, ...]] = {
    "nat": (PREROUTING, OUTPUT, POSTROUTING),
    "filter": (FORWARD, INPUT),
}

METADATA = "169.254.169.254/32"
LOOPBACK = "127.0.0.0/8"
# Time for one iptables command; the nft backend answers in milliseconds.
COMMAND_TIMEOUT = 30.0
STDERR_MAX = 500


class NatError(Exception):
    """An iptables command failed; the message holds its stderr."""


@dataclass(frozen=True)
class Hook:
    """The one jump from a built-in chain into one of ours."""

    table: str
    chain: str
    match: tuple[str, ...]
    target: str

    @property
    def spec(self) -> list[str]:
        """The rule as iptables arguments, without the chain."""
        return [*self.match, "-j", self.target]


# Only traffic to the host's own addresses is DNATed: a guest port is published
# on the host, never on an address that merely passes through it.
LOCAL_ONLY = ("-m", "addrtype", "--dst-type", "LOCAL")
HOOKS = (
    Hook("nat", "PREROUTING", LOCAL_ONLY, PREROUTING),
    Hook("nat", "OUTPUT", LOCAL_ONLY, OUTPUT),
    Hook("nat", "POSTROUTING", (), POSTROUTING),
    Hook("filter", "FORWARD", (), FORWARD),
    Hook("filter", "INPUT", (), INPUT),
)


@dataclass(frozen=True)
class Forward:
    """A host port forwarded to a port of a service's guest."""

    service: str
    host_port: int
    guest_ip: str
    vm_port: int


@dataclass(frozen=True)
class Link:
    """Service ``service`` (at ``source_ip``) may connect to ``target_ip:port``."""

    service: str
    source_ip: str
    target_ip: str
    port: int


@dataclass(frozen=True)
class Ruleset:
    """The content of the agent's chains: table name to ``-A CHAIN ...`` lines."""

    rules: dict[str, tuple[str, ...]]

    def lines(self) -> list[str]:
        """Every rule with its table (``-t nat -A ...``), for plans and logs."""
        return [
            f"-t {table} {rule}"
            for table, rules in self.rules.items()
            for rule in rules
        ]


def build_rules(
    *,
    bridge: str,
    subnet: str,
    out_interface: str | None,
    forwards: Sequence[Forward],
    links: Sequence[Link],
    isolation: Isolation,
    block_metadata: bool,
) -> Ruleset:
    """The agent's rules for one node; ``ValueError`` names the bad field.

    Every value is checked before it becomes iptables text, so nothing from a
    service spec can smuggle in an option or a second rule.
    """
    _check_interface("bridge", bridge)
    if out_interface is not None:
        _check_interface("out_interface", out_interface)
    network = _network(subnet)
    if isolation not in ISOLATIONS:
        raise ValueError(f"isolation: must be one of {', '.join(ISOLATIONS)}")
    checked_forwards = _checked_forwards(forwards, network)
    checked_links = _checked_links(links, network)
    nat = (
        *_dnat_rules(PREROUTING, checked_forwards),
        *_dnat_rules(OUTPUT, checked_forwards),
        *_masquerade_rules(bridge, str(network), out_interface),
    )
    filter_ = (
        *_forward_chain(
            bridge, checked_forwards, checked_links, isolation, block_metadata
        ),
        *_input_chain(bridge, isolation, block_metadata),
    )
    return Ruleset({"nat": nat, "filter": filter_})


def _comment(service: str) -> str:
    return f'-m comment --comment "firework:{service}"'


def _dnat_rules(chain: str, forwards: Sequence[Forward]) -> list[str]:
    return [
        f"-A {chain} -p tcp -m tcp --dport {f.host_port} {_comment(f.service)} "
        f"-j DNAT --to-destination {f.guest_ip}:{f.vm_port}"
        for f in forwards
    ]


def _masquerade_rules(bridge: str, subnet: str, out_interface: str | None) -> list[str]:
    # A host-local connection DNATed to a guest keeps its 127.x source, which
    # the guest could not answer: it leaves with the bridge address instead.
    rules = [f"-A {POSTROUTING} -s {LOOPBACK} -o {bridge} -j MASQUERADE"]
    # A guest reaching a published port that leads back into the subnet (its
    # own, or another guest's): without this the answer skips the host's NAT
    # and the caller drops it.
    rules.append(
        f"-A {POSTROUTING} -s {subnet} -d {subnet} -m conntrack --ctstate DNAT "
        "-j MASQUERADE"
    )
    if out_interface is not None:
        rules.append(
            f"-A {POSTROUTING} -s {subnet} ! -d {subnet} -o {out_interface} "
            "-j MASQUERADE"
        )
    return rules


def _forward_chain(
    bridge: str,
    forwards: Sequence[Forward],
    links: Sequence[Link],
    isolation: Isolation,
    block_metadata: bool,
) -> list[str]:
    rules = []
    if block_metadata:
        rules.append(f"-A {FORWARD} -d {METADATA} -i {bridge} -j DROP")
    rules.append(f"-A {FORWARD} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
    rules += [
        f"-A {FORWARD} -d {f.guest_ip}/32 -o {bridge} -p tcp -m tcp "
        f"--dport {f.vm_port} -m conntrack --ctstate DNAT {_comment(f.service)} "
        "-j ACCEPT"
        for f in forwards
    ]
    if isolation == "links":
        rules += [
            f"-A {FORWARD} -s {link.source_ip}/32 -d {link.target_ip}/32 "
            f"-i {bridge} -o {bridge} -p tcp -m tcp --dport {link.port} "
            f"{_comment(link.service)} -j ACCEPT"
            for link in links
        ]
        rules.append(f"-A {FORWARD} -i {bridge} -o {bridge} -j DROP")
    else:
        # Guests reach each other even where the host's FORWARD policy is DROP.
        rules.append(f"-A {FORWARD} -i {bridge} -o {bridge} -j ACCEPT")
    rules.append(f"-A {FORWARD} -i {bridge} ! -o {bridge} -j ACCEPT")
    # Two host ports forwarded to one guest port need one ACCEPT, not two.
    return list(dict.fromkeys(rules))


def _input_chain(bridge: str, isolation: Isolation, block_metadata: bool) -> list[str]:
    rules = []
    if block_metadata:
        rules.append(f"-A {INPUT} -d {METADATA} -i {bridge} -j DROP")
    if isolation == "links":
        # Guests open no connection to the node itself: only answers to the
        # node's own (health checks) come back in.
        rules += [
            f"-A {INPUT} -i {bridge} -m conntrack --ctstate RELATED,ESTABLISHED "
            "-j ACCEPT",
            f"-A {INPUT} -i {bridge} -j DROP",
        ]
    return rules


def _checked_forwards(
    forwards: Iterable[Forward], network: ipaddress.IPv4Network
) -> list[Forward]:
    """Valid, canonical forwards sorted by service and host port."""
    checked: dict[int, Forward] = {}
    for forward in forwards:
        name = _service(forward.service)
        host_port = _port(name, "host_port", forward.host_port)
        vm_port = _port(name, "vm_port", forward.vm_port)
        guest_ip = _guest_ip(name, "guest_ip", forward.guest_ip, network)
        other = checked.get(host_port)
        if other is not None:
            if other.service == name:
                raise ValueError(f"service {name}: host_port {host_port} used twice")
            first, second = sorted((other.service, name))
            raise ValueError(
                f"services {first} and {second}: both forward host_port {host_port}"
            )
        checked[host_port] = Forward(name, host_port, guest_ip, vm_port)
    return sorted(checked.values(), key=lambda f: (f.service, f.host_port))


def _checked_links(links: Iterable[Link], network: ipaddress.IPv4Network) -> list[Link]:
    """Valid, canonical links without repeats, sorted by service and port."""
    checked = {
        Link(
            service=(name := _service(link.service)),
            source_ip=_guest_ip(name, "source_ip", link.source_ip, network),
            target_ip=_guest_ip(name, "target_ip", link.target_ip, network),
            port=_port(name, "port", link.port),
        )
        for link in links
    }
    return sorted(checked, key=lambda k: (k.service, k.port, k.target_ip, k.source_ip))


def _service(name: object) -> str:
    if not isinstance(name, str) or not DNS_LABEL.fullmatch(name):
        raise ValueError(f"service {name!r}: name is not a DNS label")
    return name


def _port(service: str, field: str, value: object) -> int:
    # bool is an int to Python, but True is no port.
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"service {service}: {field} must be 1..65535, got {value!r}")
    return value


def _guest_ip(
    service: str, field: str, value: object, network: ipaddress.IPv4Network
) -> str:
    # ipaddress also takes ints and bytes; only a dotted quad is accepted here.
    try:
        if not isinstance(value, str):
            raise ValueError
        address = ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError(
            f"service {service}: {field} {value!r} is not an IPv4 address"
        ) from None
    if address not in network:
        raise ValueError(
            f"service {service}: {field} {address} is outside subnet {network}"
        )
    return str(address)


def _network(subnet: object) -> ipaddress.IPv4Network:
    try:
        if not isinstance(subnet, str):
            raise ValueError
        return ipaddress.IPv4Network(subnet)
    except ValueError:
        raise ValueError(
            f"subnet: {subnet!r} is not an IPv4 network like 172.16.0.0/24"
        ) from None


def _check_interface(field: str, name: object) -> None:
    if not isinstance(name, str) or not IFACE.fullmatch(name):
        raise ValueError(f"{field}: {name!r} is not an interface name")


class Iptables:
    """Applies, reads back and removes the agent's chains with the iptables tools.

    ``prefix`` goes before every command, e.g. ``["ip", "netns", "exec", ns]``.
    """

    def __init__(
        self,
        iptables: str = "iptables",
        restore: str = "iptables-restore",
        save: str = "iptables-save",
        prefix: Sequence[str] = (),
        *,
        chains: Mapping[str, tuple[str, ...]] = CHAINS,
        hooks: Sequence[Hook] = HOOKS,
    ) -> None:
        self.iptables = iptables
        self.restore = restore
        self.save = save
        self.prefix = list(prefix)
        self.chains = dict(chains)  # table -> our chains in it
        self.hooks = tuple(hooks)

    def apply(self, ruleset: Ruleset) -> None:
        """Make our chains hold exactly ``ruleset`` and hook each of them once.

        The restore declares every chain, which creates a missing one and
        flushes an existing one, so a table's chains change in one transaction;
        hooks go in afterwards, when the chains they jump to exist.
        """
        unknown = set(ruleset.rules) - set(self.chains)
        if unknown:
            raise ValueError(f"ruleset: unknown tables {', '.join(sorted(unknown))}")
        # Every table's input is checked before any of it reaches the kernel.
        inputs = {
            table: _restore_input(table, chains, ruleset.rules.get(table, ()))
            for table, chains in self.chains.items()
        }
        for table, lines in inputs.items():
            self._restore(table, lines)
        for hook in self.hooks:
            if not self._hooked(hook):
                self._iptables(hook.table, "-I", hook.chain, "1", *hook.spec)
        log.info("iptables rules applied rules=%d", len(ruleset.lines()))

    def current(self) -> Ruleset:
        """What our chains hold now, in the order :func:`build_rules` makes it."""
        rules = {}
        for table, chains in self.chains.items():
            by_chain: dict[str, list[str]] = {chain: [] for chain in chains}
            for line in self._save(table):
                chain = line.split(" ", 2)[1] if line.startswith("-A ") else ""
                if chain in by_chain:
                    by_chain[chain].append(line)
            rules[table] = tuple(line for lines in by_chain.values() for line in lines)
        return Ruleset(rules)

    def hooks_in_place(self) -> bool:
        """Whether every chain of ours exists and is hooked (drift check)."""
        declared = {chain for table in self.chains for chain in self._declared(table)}
        if declared != {hook.target for hook in self.hooks}:
            return False
        return all(self._hooked(hook) for hook in self.hooks)

    def installed(self) -> bool:
        """Whether any chain of ours exists."""
        return any(self._declared(table) for table in self.chains)

    def remove(self) -> None:
        """Unhook and delete our chains; a no-op when they are already gone."""
        for table in self.chains:
            ours = self._declared(table)
            for hook in self.hooks:
                # Repeat: a hook inserted by hand may be there twice.
                while hook.target in ours and self._hooked(hook):
                    self._iptables(hook.table, "-D", hook.chain, *hook.spec)
            if ours:
                lines = [f"-F {chain}" for chain in ours] + [
                    f"-X {chain}" for chain in ours
                ]
                self._restore(table, [f"*{table}", *lines, "COMMIT"])
        log.info("iptables rules removed")

    def _declared(self, table: str) -> list[str]:
        """Those of our chains in ``table`` that exist."""
        lines = self._save(table)
        names = {line[1:].split(" ", 1)[0] for line in lines if line.startswith(":")}
        return [chain for chain in self.chains[table] if chain in names]

    def _hooked(self, hook: Hook) -> bool:
        done = self._run(
            [self.iptables, "-w", "-t", hook.table, "-C", hook.chain, *hook.spec]
        )
        if done.returncode not in (0, 1):
            raise NatError(_failure(f"checking hook in {hook.chain}", done))
        return done.returncode == 0

    def _iptables(self, table: str, *args: str) -> None:
        done = self._run([self.iptables, "-w", "-t", table, *args])
        if done.returncode != 0:
            raise NatError(_failure(f"iptables -t {table} {args[0]} {args[1]}", done))

    def _restore(self, table: str, lines: Sequence[str]) -> None:
        text = "\n".join(lines) + "\n"
        done = self._run([self.restore, "-w", "--noflush"], stdin=text)
        if done.returncode != 0:
            raise NatError(_failure(f"restoring table {table}", done))

    def _save(self, table: str) -> list[str]:
        done = self._run([self.save, "-t", table])
        if done.returncode != 0:
            raise NatError(_failure(f"reading table {table}", done))
        return done.stdout.splitlines()

    def _run(
        self, argv: Sequence[str], stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        command = [*self.prefix, *argv]
        try:
            return subprocess.run(  # noqa: S603 - fixed argv, no shell
                command,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT,
                check=False,
            )
        except FileNotFoundError:
            raise NatError(f"running {command[0]}: not found") from None
        except subprocess.TimeoutExpired:
            raise NatError(
                f"running {argv[0]}: no answer after {COMMAND_TIMEOUT:.0f}s"
            ) from None


def _restore_input(
    table: str, chains: tuple[str, ...], rules: Sequence[str]
) -> list[str]:
    """``iptables-restore --noflush`` input replacing our ``chains`` in ``table``."""
    for rule in rules:
        parts = rule.split(" ", 2)
        if parts[0] != "-A" or len(parts) < 3 or parts[1] not in chains or "\n" in rule:
            raise ValueError(f"ruleset: {table} rule {rule!r} is not for our chains")
    # Declaring a chain flushes it under --noflush on both backends; the explicit
    # -F keeps the replacement from depending on that.
    return [
        f"*{table}",
        *(f":{chain} - [0:0]" for chain in chains),
        *(f"-F {chain}" for chain in chains),
        *rules,
        "COMMIT",
    ]


def _failure(doing: str, done: subprocess.CompletedProcess[str]) -> str:
    detail = " ".join(done.stderr.split())[:STDERR_MAX] or f"exit {done.returncode}"
    return f"{doing}: {detail}"
