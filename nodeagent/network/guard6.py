"""Under link isolation no IPv6 crosses the bridge from a guest.

Firework's guest networking is IPv4, and the filter rules that keep guests apart
(:mod:`nodeagent.network.nat`) are iptables rules. Guest kernels still give
themselves IPv6 link-local addresses, and bridged IPv6 passes iptables by: a
guest could reach another guest, or the node, at its ``fe80::`` address. With
``vm_isolation: links`` the agent therefore drops every IPv6 packet that comes
in from the bridge, in two chains of its own in ip6tables' filter table,
hooked once at the top of ``FORWARD`` (bridged and routed) and ``INPUT`` (to the
node). Bridged frames reach them through br_netfilter
(``net.bridge.bridge-nf-call-ip6tables=1``, its default).
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence

from nodeagent.network.nat import FORWARD, INPUT, NatError, failure, run_tool

log = logging.getLogger(__name__)

# Built-in chain -> our chain, hooked with "-I <built-in> 1 -j <ours>".
HOOKS = {"FORWARD": FORWARD, "INPUT": INPUT}


class Ipv6Guard:
    """Keeps the agent's ip6tables chains dropping IPv6 from ``bridge``, or gone.

    ``prefix`` goes before every command, e.g. ``["ip", "netns", "exec", ns]``.
    """

    def __init__(
        self,
        bridge: str,
        *,
        ip6tables: str = "ip6tables",
        restore: str = "ip6tables-restore",
        save: str = "ip6tables-save",
        prefix: Sequence[str] = (),
    ) -> None:
        self.bridge = bridge
        self.ip6tables = ip6tables
        self.restore = restore
        self.save = save
        self.prefix = list(prefix)

    def rules(self) -> list[str]:
        """The guard's rules, in ``ip6tables-save`` form."""
        return [f"-A {ours} -i {self.bridge} -j DROP" for ours in HOOKS.values()]

    def sync(self, enabled: bool) -> bool:
        """Guard (or stop guarding) the bridge; True when something changed."""
        current = self.current()
        if enabled:
            if current == self.rules() and self._hooked_all():
                return False
            self.apply()
            return True
        if current is None:
            return False
        self.remove()
        return True

    def current(self) -> list[str] | None:
        """Our chains' rules now; None when the chains do not exist."""
        lines = self._save()
        declared = {line[1:].split(" ", 1)[0] for line in lines if line[:1] == ":"}
        if not declared & set(HOOKS.values()):
            return None
        ours = tuple(f"-A {chain} " for chain in HOOKS.values())
        return sorted(line for line in lines if line.startswith(ours))

    def apply(self) -> None:
        """Make our chains drop IPv6 from the bridge, and hook each of them once."""
        chains = list(HOOKS.values())
        text = "\n".join(
            [
                "*filter",
                *(f":{chain} - [0:0]" for chain in chains),
                *(f"-F {chain}" for chain in chains),
                *self.rules(),
                "COMMIT",
            ]
        )
        self._check(
            self._run([self.restore, "-w", "--noflush"], text + "\n"), "restore"
        )
        for builtin, ours in HOOKS.items():
            if not self._hooked(builtin, ours):
                self._check(
                    self._run([self.ip6tables, "-w", "-I", builtin, "1", "-j", ours]),
                    f"hook {ours}",
                )
        log.info("ipv6 guard applied bridge=%s", self.bridge)

    def remove(self) -> None:
        """Unhook and delete our chains; a no-op when they are already gone."""
        for builtin, ours in HOOKS.items():
            while self._hooked(builtin, ours):
                self._check(
                    self._run([self.ip6tables, "-w", "-D", builtin, "-j", ours]),
                    f"unhook {ours}",
                )
        if self.current() is not None:
            lines = [f"-F {c}" for c in HOOKS.values()]
            lines += [f"-X {c}" for c in HOOKS.values()]
            text = "\n".join(["*filter", *lines, "COMMIT"]) + "\n"
            self._check(self._run([self.restore, "-w", "--noflush"], text), "remove")
        log.info("ipv6 guard removed bridge=%s", self.bridge)

    def _hooked_all(self) -> bool:
        return all(self._hooked(builtin, ours) for builtin, ours in HOOKS.items())

    def _hooked(self, builtin: str, ours: str) -> bool:
        done = self._run([self.ip6tables, "-w", "-C", builtin, "-j", ours])
        if done.returncode not in (0, 1):
            self._check(done, f"check hook {ours}")
        return done.returncode == 0

    def _save(self) -> list[str]:
        done = self._run([self.save, "-t", "filter"])
        self._check(done, "read")
        return done.stdout.splitlines()

    def _check(self, done: subprocess.CompletedProcess[str], doing: str) -> None:
        if done.returncode != 0:
            raise NatError(failure(f"ip6tables {doing}", done))

    def _run(
        self, argv: Sequence[str], stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run_tool([*self.prefix, *argv], stdin)
