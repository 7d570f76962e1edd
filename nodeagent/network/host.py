"""The bridge the guests share and the TAP device of each guest, over netlink.

Every ``ensure_*`` method compares what is there with what should be and
changes only the difference, so the agent can call them on every tick. Work
happens in the current network namespace, or in a named one (``ip netns add``)
so tests can build a whole node inside a namespace they own.

TAPs are persistent: they outlive the process that made them, and a jailed,
unprivileged Firecracker opens its TAP by name. That is why a TAP carries the
jail's uid and gid.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from ipaddress import IPv4Interface
from pathlib import Path
from types import TracebackType
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netns import setns

from nodeagent.naming import IFNAME_MAX

log = logging.getLogger(__name__)

IFF_UP = 0x1
TUN_TYPE_TAP = 2  # IFLA_TUN_TYPE of a TAP; 1 is a TUN
# The kernel accepts more, but these are all an ip(8) user can type unquoted.
IFNAME_CHARS = re.compile(r"[A-Za-z0-9_.-]+")
# The flags Firecracker opens its TAP with. The opener's flags win anyway; this
# keeps the device as ``ip -d link`` shows it between creation and first open.
TAP_FLAGS = {"no_pi": 1, "vnet_hdr": 1}

Link = Any  # a pyroute2 ifinfmsg: a dict-like netlink message without types


class NetworkError(Exception):
    """A host network device could not be set up; the message names the device."""


def check_ifname(name: str) -> str:
    """``name`` if it is a usable interface name, else ``ValueError``."""
    if (
        len(name.encode()) > IFNAME_MAX
        or not IFNAME_CHARS.fullmatch(name)
        or name in (".", "..")
    ):
        raise ValueError(
            f"{name!r} is not an interface name: at most {IFNAME_MAX} "
            "characters from A-Z a-z 0-9 _ . -"
        )
    return name


def _reason(exc: Exception) -> str:
    """The errno text of a netlink or OS error, without pyroute2's tuple."""
    if isinstance(exc, NetlinkError):
        return os.strerror(exc.code)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


@contextmanager
def _failing_as(subject: str, action: str) -> Iterator[None]:
    """Turn a netlink or OS error into ``NetworkError("<subject>: <action>: …")``."""
    try:
        yield
    except (NetlinkError, OSError) as exc:
        raise NetworkError(f"{subject}: {action}: {_reason(exc)}") from exc


def _is_tap(link: Link) -> bool:
    return bool(
        link.get(("linkinfo", "kind")) == "tun"
        and link.get(("linkinfo", "data", "tun_type")) == TUN_TYPE_TAP
    )


def _is_up(link: Link) -> bool:
    return bool(link["flags"] & IFF_UP)


# A sysctl as the parts of its /proc/sys path: an interface name may hold a dot.
Sysctl = tuple[str, ...]


def _set_sysctls(values: Mapping[Sysctl, str], subject: str) -> None:
    """Write each ``/proc/sys`` value that differs; reading first keeps it cheap."""
    for key, value in values.items():
        path = Path("/proc/sys", *key)
        with _failing_as(subject, f"set {'.'.join(key)}={value}"):
            if path.read_text().strip() != value:
                path.write_text(value)
                log.info("sysctl set key=%s value=%s", ".".join(key), value)


def _set_sysctls_in(netns: str, values: Mapping[Sysctl, str], subject: str) -> None:
    """Write sysctls inside network namespace ``netns``.

    ``/proc/sys/net`` shows the namespace of the thread that opens it, and
    setns(2) moves only the calling thread. So a throwaway thread enters the
    namespace, writes, and exits: the agent's other threads never leave theirs,
    and nothing forks (forking a threaded process is riskier than a thread).
    """
    failures: list[Exception] = []

    def enter_and_write() -> None:
        try:
            with _failing_as(subject, f"enter netns {netns}"):
                setns(netns, flags=0)  # flags=0: never create a missing netns
            _set_sysctls(values, subject)
        except Exception as exc:
            failures.append(exc)

    worker = threading.Thread(target=enter_and_write, name=f"sysctl-{netns}")
    worker.start()
    worker.join()
    if failures:
        raise failures[0]


BRIDGE_FILTERING: Mapping[Sysctl, str] = {
    ("net", "bridge", "bridge-nf-call-iptables"): "1",
    ("net", "bridge", "bridge-nf-call-ip6tables"): "1",
}


class HostNetwork:
    """The bridge ``bridge`` with ``gateway/prefix_len`` on it, and TAPs on it.

    Holds one netlink socket, opened at first use; not for use from several
    threads at once. ``netns`` names a namespace from ``ip netns add`` to act
    in instead of the current one.
    """

    def __init__(
        self, bridge: str, gateway: str, prefix_len: int, *, netns: str | None = None
    ) -> None:
        self.bridge = check_ifname(bridge)
        self.gateway = IPv4Interface(f"{gateway}/{prefix_len}")
        self.netns = netns
        self._ipr: Any = None

    # -- lifecycle -------------------------------------------------------------

    @property
    def ipr(self) -> Any:
        """The netlink socket; opened lazily so constructing does no I/O."""
        if self._ipr is None:
            where = f"netns {self.netns}" if self.netns else "host"
            with _failing_as(where, "open netlink socket"):
                # flags=0: a missing namespace is an error, not created empty.
                self._ipr = (
                    IPRoute(netns=self.netns, flags=0) if self.netns else IPRoute()
                )
        return self._ipr

    def close(self) -> None:
        """Release the netlink socket; a later call opens a new one."""
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def __enter__(self) -> HostNetwork:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the bridge ------------------------------------------------------------

    def ensure_bridge(self) -> None:
        """The bridge exists, carries the gateway address, is up, and routes.

        Also turns on IPv4 forwarding (guests reach the outside through the
        host) and ``route_localnet`` (port forwards from 127.0.0.1 are DNATed
        to guests on the bridge, which the kernel refuses without it).
        """
        subject = f"bridge {self.bridge}"
        link = self._link(self.bridge, subject)
        if link is None:
            with _failing_as(subject, "create"):
                self.ipr.link("add", ifname=self.bridge, kind="bridge")
            log.info("bridge created bridge=%s", self.bridge)
            link = self._link(self.bridge, subject)
            assert link is not None  # just created; netlink is synchronous
        elif link.get(("linkinfo", "kind")) != "bridge":
            kind = link.get(("linkinfo", "kind")) or "plain device"
            raise NetworkError(f"{subject}: exists but is a {kind}, not a bridge")
        index = int(link["index"])
        self._ensure_gateway(index, subject)
        if not _is_up(link):
            with _failing_as(subject, "bring up"):
                self.ipr.link("set", index=index, state="up")
        self._ensure_sysctls(subject)

    def _ensure_gateway(self, index: int, subject: str) -> None:
        """Add the gateway address; drop the gateway IP with a stale prefix.

        Other addresses stay. The gateway IP with another prefix is what an
        earlier config left: keeping it would keep routing the old subnet here.
        """
        wanted = self.gateway
        with _failing_as(subject, "list addresses"):
            present = {
                IPv4Interface(f"{a.get('address')}/{a['prefixlen']}")
                for a in self.ipr.get_addr(index=index, family=socket.AF_INET)
            }
        for stale in present:
            if stale.ip == wanted.ip and stale != wanted:
                with _failing_as(subject, f"remove stale address {stale}"):
                    self.ipr.addr(
                        "del",
                        index=index,
                        address=str(stale.ip),
                        prefixlen=stale.network.prefixlen,
                    )
                log.info(
                    "bridge address removed bridge=%s address=%s", self.bridge, stale
                )
        if wanted not in present:
            with _failing_as(subject, f"add address {wanted}"):
                self.ipr.addr(
                    "add",
                    index=index,
                    address=str(wanted.ip),
                    prefixlen=wanted.network.prefixlen,
                )
            log.info("bridge address added bridge=%s address=%s", self.bridge, wanted)

    def _ensure_sysctls(self, subject: str) -> None:
        values = {
            ("net", "ipv4", "ip_forward"): "1",
            ("net", "ipv4", "conf", "all", "route_localnet"): "1",
            ("net", "ipv4", "conf", self.bridge, "route_localnet"): "1",
        }
        self._write_sysctls(values, subject)

    def ensure_bridge_filtering(self) -> None:
        """Frames between guests pass through iptables and ip6tables.

        Without it link isolation holds nothing back: bridged traffic never
        meets the FORWARD chains. The sysctls exist once br_netfilter is loaded
        (NetworkError otherwise) and belong to each network namespace.
        """
        self._write_sysctls(BRIDGE_FILTERING, "bridge filtering")

    def _write_sysctls(self, values: Mapping[Sysctl, str], subject: str) -> None:
        if self.netns is None:
            _set_sysctls(values, subject)
        else:
            _set_sysctls_in(self.netns, values, subject)

    # -- TAPs ------------------------------------------------------------------

    def ensure_tap(
        self, name: str, *, owner: int | None = None, group: int | None = None
    ) -> None:
        """A persistent TAP ``name`` on the bridge, up, owned by ``owner:group``.

        An existing TAP is kept (a running VM may hold it open) and only
        corrected: moved to the bridge, brought up, its owner changed. ``None``
        for ``owner`` or ``group`` leaves an existing TAP's value as it is. The
        bridge must exist (:meth:`ensure_bridge`).
        """
        check_ifname(name)
        subject = f"tap {name}"
        bridge = self._link(self.bridge, subject)
        if bridge is None:
            raise NetworkError(f"{subject}: bridge {self.bridge} does not exist")
        link = self._link(name, subject)
        if link is None:
            self._create_tap(name, owner, group, subject)
            link = self._link(name, subject)
            assert link is not None  # just created
        elif not _is_tap(link):
            kind = link.get(("linkinfo", "kind")) or "plain device"
            raise NetworkError(f"{subject}: exists but is a {kind}, not a TAP")
        elif _owner_differs(link, owner, group):
            self._create_tap(name, owner, group, subject)
        index = int(link["index"])
        bridge_index = int(bridge["index"])
        if link.get("master") != bridge_index:
            with _failing_as(subject, f"attach to {self.bridge}"):
                self.ipr.link("set", index=index, master=bridge_index)
            if link.get("master"):
                log.info("tap moved tap=%s bridge=%s", name, self.bridge)
        # Hairpin: a frame may leave by the port it came in on. A guest that
        # calls a port the node forwards back to itself needs it, since the
        # bridge's netfilter hands the DNATed frame back to the same port.
        with _failing_as(subject, "set hairpin mode"):
            self.ipr.brport("set", index=index, mode=1)
        if not _is_up(link):
            with _failing_as(subject, "bring up"):
                self.ipr.link("set", index=index, state="up")

    def _create_tap(
        self, name: str, owner: int | None, group: int | None, subject: str
    ) -> None:
        """Create a TAP, or re-own an existing one that nothing holds open.

        pyroute2 makes TAPs with the TUNSETIFF ioctl, not netlink, and on a
        name that exists it reopens that TAP instead of failing: setting the
        owner again is exactly that. A TAP in use answers EBUSY.
        """
        options: dict[str, Any] = {"mode": "tap", "ifr": TAP_FLAGS}
        if owner is not None:
            options["uid"] = owner
        if group is not None:
            options["gid"] = group
        try:
            self.ipr.link("add", ifname=name, kind="tuntap", **options)
        except NetlinkError as exc:
            if exc.code == errno.EBUSY:
                raise NetworkError(
                    f"{subject}: in use, cannot change its owner to "
                    f"{owner}:{group}; stop the VM that holds it"
                ) from exc
            raise NetworkError(f"{subject}: create: {_reason(exc)}") from exc
        except OSError as exc:
            raise NetworkError(f"{subject}: create: {_reason(exc)}") from exc
        log.info("tap created tap=%s owner=%s group=%s", name, owner, group)

    def remove_tap(self, name: str) -> None:
        """Delete TAP ``name``; a missing one is fine, a non-TAP is refused."""
        check_ifname(name)
        subject = f"tap {name}"
        link = self._link(name, subject)
        if link is None:
            return
        if not _is_tap(link):
            raise NetworkError(f"{subject}: not a TAP, refusing to delete it")
        try:
            self.ipr.link("del", index=int(link["index"]))
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:  # gone meanwhile: what we wanted
                raise NetworkError(f"{subject}: delete: {_reason(exc)}") from exc
        log.debug("tap deleted tap=%s", name)

    def taps(self, prefix: str = "fw-") -> set[str]:
        """Names of the TAPs starting with ``prefix`` (not TUNs, not others)."""
        with _failing_as(f"taps {prefix}*", "list links"):
            links = self.ipr.get_links()
        return {
            str(link.get("ifname"))
            for link in links
            if _is_tap(link) and str(link.get("ifname")).startswith(prefix)
        }

    # -- helpers ---------------------------------------------------------------

    def _link(self, name: str, subject: str) -> Link | None:
        """The link called ``name``, or None; one RTM_GETLINK, not a dump."""
        try:
            return self.ipr.link("get", ifname=name)[0]
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise NetworkError(f"{subject}: look up {name}: {_reason(exc)}") from exc


def _owner_differs(link: Link, owner: int | None, group: int | None) -> bool:
    """Whether ``link`` (a TAP) has another owner or group than asked for."""
    data = ("linkinfo", "data")
    return (owner is not None and link.get((*data, "tun_owner")) != owner) or (
        group is not None and link.get((*data, "tun_group")) != group
    )
