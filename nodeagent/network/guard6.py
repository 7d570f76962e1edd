"""Under link isolation no IPv6 crosses the bridge from a guest.

Firework's guest networking is IPv4, and the filter rules that keep guests apart
(:mod:`nodeagent.network.nat`) are iptables rules. Guest kernels still give
themselves IPv6 link-local addresses, and bridged IPv6 passes iptables by: a
guest could reach another guest, or the node, at its ``fe80::`` address. With
``vm_isolation: links`` the agent therefore drops every IPv6 packet that comes
in from the bridge, in two chains of its own in ip6tables' filter table,
hooked once at the top of ``FORWARD`` (bridged and routed) and ``INPUT`` (to the
node). Bridged frames reach them through br_netfilter
(``net.bridge.bridge-nf-call-ip6tables=1``). The chains are kept by the same
:class:`~nodeagent.network.nat.Iptables` as the IPv4 ones, on the ip6tables tools.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from nodeagent.network.nat import FORWARD, INPUT, Hook, Iptables, Ruleset

log = logging.getLogger(__name__)

CHAINS = {"filter": (FORWARD, INPUT)}
HOOKS = (
    Hook("filter", "FORWARD", (), FORWARD),
    Hook("filter", "INPUT", (), INPUT),
)


class Ipv6Guard:
    """Keeps the agent's ip6tables chains dropping IPv6 from ``bridge``, or gone.

    ``prefix`` goes before every command, e.g. ``["ip", "netns", "exec", ns]``.
    """

    def __init__(self, bridge: str, *, prefix: Sequence[str] = ()) -> None:
        self.bridge = bridge
        self.tables = Iptables(
            "ip6tables",
            "ip6tables-restore",
            "ip6tables-save",
            prefix,
            chains=CHAINS,
            hooks=HOOKS,
        )

    def rules(self) -> list[str]:
        """The guard's rules, in ``ip6tables-save`` form."""
        return [f"-A {chain} -i {self.bridge} -j DROP" for chain in CHAINS["filter"]]

    def sync(self, enabled: bool) -> bool:
        """Guard (or stop guarding) the bridge; True when something changed."""
        if enabled:
            wanted = Ruleset({"filter": tuple(self.rules())})
            if self.tables.current() == wanted and self.tables.hooks_in_place():
                return False
            self.tables.apply(wanted)
            log.info("ipv6 guard applied bridge=%s", self.bridge)
            return True
        if not self.tables.installed():
            return False
        self.remove()
        return True

    def remove(self) -> None:
        """Unhook and delete our chains; a no-op when they are already gone."""
        self.tables.remove()
        log.info("ipv6 guard removed bridge=%s", self.bridge)
