"""The host side of the node's guests, as the agent uses it: bridge, TAPs, NAT.

:class:`NodeNetwork` wraps :mod:`nodeagent.network.host` (pyroute2) and
:mod:`nodeagent.network.nat` (iptables) with what the agent knows: which
services run, which TAPs they use, which ports they forward and which links
they have. :func:`rules_for` is pure, so ``firework-agent plan`` shows exactly
the rules the agent would apply.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import threading
from collections.abc import Collection, Mapping
from ipaddress import IPv4Network

from nodeagent.config import AgentConfig
from nodeagent.jailer import Jailer
from nodeagent.network.guard6 import Ipv6Guard
from nodeagent.network.host import HostNetwork, NetworkError
from nodeagent.network.nat import (
    Forward,
    Iptables,
    Link,
    NatError,
    Ruleset,
    build_rules,
)
from nodeagent.resolve import Prepared
from nodeagent.spec.node import ServiceConfig

log = logging.getLogger(__name__)

# Rules are re-applied when they change; every this many syncs they are also
# read back, so rules someone flushed by hand come back without a change.
DRIFT_CHECK_EVERY = 10
TAP_PREFIX = "fw-"


def rules_for(config: AgentConfig, prepared: Mapping[str, Prepared]) -> Ruleset:
    """The NAT and filter rules for the services of ``prepared``."""
    forwards = [
        Forward(p.name, pf.host_port, p.assigned.ip, pf.vm_port)
        for p in prepared.values()
        if p.assigned is not None
        for pf in p.service.port_forwards
    ]
    links = []
    for p in prepared.values():
        if p.assigned is None:
            continue
        for link in p.service.links:
            target = prepared.get(link.service)
            if target is not None and target.assigned is not None:
                links.append(Link(p.name, p.assigned.ip, target.assigned.ip, link.port))
    return build_rules(
        bridge=config.vm_bridge,
        subnet=config.vm_subnet,
        out_interface=config.out_interface,
        forwards=forwards,
        links=links,
        isolation=config.vm_isolation,
        block_metadata=config.vm_block_metadata,
    )


def load_module(name: str) -> None:
    """``modprobe name``; a failure is logged, the caller finds out what works."""
    try:
        done = subprocess.run(  # noqa: S603 - fixed argv, no shell
            ["modprobe", name],  # noqa: S607 - from PATH, as the iptables tools
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("modprobe failed module=%s error=%s", name, exc)
        return
    if done.returncode != 0:
        log.warning("modprobe failed module=%s error=%s", name, done.stderr.strip())
    else:
        log.info("kernel module loaded module=%s", name)


def ipv6_rules_for(config: AgentConfig) -> list[str]:
    """The ip6tables filter rules of the IPv6 guard; none without link isolation."""
    if config.vm_isolation != "links":
        return []
    return [f"-t filter {rule}" for rule in Ipv6Guard(config.vm_bridge).rules()]


class NodeNetwork:
    """Bridge, TAPs and rules of one node; every method is idempotent."""

    def __init__(self, config: AgentConfig, jailer: Jailer | None = None) -> None:
        self.config = config
        prefix = IPv4Network(config.vm_subnet).prefixlen
        self.host = HostNetwork(config.vm_bridge, config.vm_gateway, prefix)
        self.nat = Iptables()
        self.guard6 = Ipv6Guard(config.vm_bridge)
        # A jailed Firecracker runs unprivileged: its TAP must belong to it.
        self.owner = jailer.uid if jailer else None
        self.group = jailer.gid if jailer else None
        self._bridge_ready = False
        # VM starts run in parallel: one netlink socket, one bridge creation.
        self._lock = threading.RLock()
        self._rules: Ruleset | None = None  # as last applied
        self._prepared: Mapping[str, Prepared] | None = None
        self._built = Ruleset({})  # the rules for ``_prepared``
        self._syncs = 0

    def ensure_bridge(self) -> None:
        """Create and address the bridge once (and again after a failure)."""
        with self._lock:
            if self._bridge_ready:
                return
            self.host.ensure_bridge()
            self._bridge_ready = True
        log.info(
            "bridge ready bridge=%s gateway=%s",
            self.config.vm_bridge,
            self.config.vm_gateway,
        )

    def tap_up(self, service: ServiceConfig) -> None:
        """The service's TAP exists, on the bridge, up (networked services only)."""
        if service.network is None:
            return
        with self._lock:
            self.ensure_bridge()
            self.host.ensure_tap(
                service.network.interface, owner=self.owner, group=self.group
            )

    def tap_down(self, tap: str | None) -> None:
        """Remove a TAP a stopped VM used, if any."""
        if tap:
            with self._lock:
                self.host.remove_tap(tap)
            log.info("tap removed tap=%s", tap)

    def remove_leftovers(self, keep: Collection[str]) -> list[str]:
        """Delete ``fw-`` TAPs no service uses (say, after a crash mid-removal)."""
        with self._lock:
            gone = sorted(self.host.taps(TAP_PREFIX) - set(keep))
            for tap in gone:
                self.host.remove_tap(tap)
                log.info("leftover tap removed tap=%s", tap)
        return gone

    def sync_rules(self, prepared: Mapping[str, Prepared]) -> bool:
        """Apply the rules for ``prepared`` when they changed or drifted.

        Returns True when rules were (re)applied. The agent passes the same
        mapping until the desired state changes, so the rules are only built
        again then, not on every tick.
        """
        if prepared is not self._prepared or self._rules is None:
            self._built = rules_for(self.config, prepared)
            self._prepared = prepared
        rules = self._built
        self._syncs += 1
        drifted = False
        check = self._syncs % DRIFT_CHECK_EVERY == 0
        if rules == self._rules and check:
            drifted = self.nat.current() != rules
            if drifted:
                log.warning("nat rules drifted, re-applying")
        if rules == self._rules and not drifted:
            if check:
                self._filter_bridge()
                self._guard_ipv6()
            return False
        self.ensure_bridge()
        self.nat.apply(rules)
        self._filter_bridge()
        self._guard_ipv6()
        self._rules = rules
        log.info("nat rules applied rules=%d", len(rules.lines()))
        return True

    def _filter_bridge(self) -> None:
        """Under link isolation, bridged frames must meet the filter rules.

        br_netfilter is loaded when its sysctls are missing; if that fails the
        agent says isolation is not enforced, and carries on.
        """
        if self.config.vm_isolation != "links":
            return
        try:
            self.host.ensure_bridge_filtering()
            return
        except NetworkError:
            load_module("br_netfilter")
        try:
            self.host.ensure_bridge_filtering()
        except NetworkError as exc:
            log.error("link isolation not enforced between guests error=%s", exc)

    def _guard_ipv6(self) -> None:
        """IPv6 from guests dropped under link isolation (see network.guard6).

        A host without ip6tables (or without IPv6) cannot be guarded; that is
        said, and the IPv4 rules stand regardless.
        """
        wanted = self.config.vm_isolation == "links"
        try:
            if self.guard6.sync(wanted):
                log.info("ipv6 guard synced isolation=%s", self.config.vm_isolation)
        except NatError as exc:
            if wanted:
                log.error("ipv6 guard failed, guests may talk over IPv6 error=%s", exc)
            else:
                log.debug("ipv6 guard not checked error=%s", exc)

    def teardown(self) -> None:
        """Remove the agent's chains and hooks (with ``--stop-vms``)."""
        self.nat.remove()
        with contextlib.suppress(NatError):  # no ip6tables: nothing to remove
            self.guard6.remove()
        self._rules = None

    def close(self) -> None:
        """Release netlink sockets."""
        self.host.close()
