"""HostNetwork for real: bridge, sysctls and TAPs inside a namespace the test owns.

Each test gets a fresh "node" namespace and points :class:`HostNetwork` at it;
what it did is read back with ``ip -j`` and ``/sys``/``/proc`` from inside that
namespace, never through pyroute2, so the checks do not share its mistakes.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodeagent.network.host import HostNetwork, NetworkError
from tests.netns import Namespaces, exec_in, popen_in, python_in

BRIDGE = "br-fwt"
GATEWAY = "172.30.0.1"
GUEST_IP = "172.30.0.2"
JAIL_UID = 1234
JAIL_GID = 2345
HOST_SYSCTLS = ("net/ipv4/ip_forward", "net/ipv4/conf/all/route_localnet")


@pytest.fixture
def node(namespaces: Namespaces) -> str:
    """The namespace standing in for the node's host."""
    return namespaces.new("node")


@pytest.fixture
def host(node: str) -> Iterator[HostNetwork]:
    """A HostNetwork acting in ``node`` with a /24 gateway."""
    with HostNetwork(BRIDGE, GATEWAY, 24, netns=node) as network:
        yield network


def link(ns: str, name: str) -> dict[str, Any]:
    """``ip -j -d link show name`` inside ``ns``."""
    out = exec_in(ns, ["ip", "-j", "-d", "link", "show", name]).stdout
    [entry] = json.loads(out)
    return dict(entry)


def exists(ns: str, name: str) -> bool:
    return exec_in(ns, ["ip", "link", "show", name], check=False).returncode == 0


def ipv4_addresses(ns: str, name: str) -> list[str]:
    out = exec_in(ns, ["ip", "-j", "-4", "addr", "show", name]).stdout
    [entry] = json.loads(out)
    return [f"{a['local']}/{a['prefixlen']}" for a in entry["addr_info"]]


def read_in(ns: str, path: str) -> str:
    """A ``/proc`` or ``/sys`` file as seen inside ``ns``."""
    return exec_in(ns, ["cat", path]).stdout.strip()


def read_host_sysctls() -> dict[str, str]:
    return {key: Path("/proc/sys", key).read_text().strip() for key in HOST_SYSCTLS}


def add_tap(ns: str, name: str, mode: str = "tap") -> None:
    """A TAP (or TUN) made with ip(8), as something other than the agent would."""
    exec_in(ns, ["ip", "tuntap", "add", "dev", name, "mode", mode])


# -- the bridge ----------------------------------------------------------------


def test_bridge_is_created_up_with_the_gateway_address(host, node):
    host.ensure_bridge()

    bridge = link(node, BRIDGE)
    assert bridge["linkinfo"]["info_kind"] == "bridge"
    assert "UP" in bridge["flags"]
    assert ipv4_addresses(node, BRIDGE) == [f"{GATEWAY}/24"]


def test_forwarding_and_route_localnet_are_set_in_the_namespace_only(host, node):
    on_host_before = read_host_sysctls()

    host.ensure_bridge()

    assert read_in(node, "/proc/sys/net/ipv4/ip_forward") == "1"
    assert read_in(node, "/proc/sys/net/ipv4/conf/all/route_localnet") == "1"
    assert read_in(node, f"/proc/sys/net/ipv4/conf/{BRIDGE}/route_localnet") == "1"
    assert read_host_sysctls() == on_host_before


def test_ensure_bridge_twice_changes_nothing(host, node):
    host.ensure_bridge()
    first = link(node, BRIDGE)["ifindex"]

    host.ensure_bridge()

    assert link(node, BRIDGE)["ifindex"] == first
    assert ipv4_addresses(node, BRIDGE) == [f"{GATEWAY}/24"]


@pytest.mark.parametrize(
    ("gateway", "prefix_len"), [("10.77.0.1", 16), ("10.77.0.5", 30)]
)
def test_bridge_takes_any_prefix(node, gateway, prefix_len):
    with HostNetwork(BRIDGE, gateway, prefix_len, netns=node) as network:
        network.ensure_bridge()

    assert ipv4_addresses(node, BRIDGE) == [f"{gateway}/{prefix_len}"]


def test_other_addresses_stay_and_a_stale_gateway_prefix_goes(host, node):
    exec_in(node, ["ip", "link", "add", BRIDGE, "type", "bridge"])
    for address in (f"{GATEWAY}/16", "192.168.50.1/24"):
        exec_in(node, ["ip", "addr", "add", address, "dev", BRIDGE])

    host.ensure_bridge()

    assert sorted(ipv4_addresses(node, BRIDGE)) == [
        f"{GATEWAY}/24",
        "192.168.50.1/24",
    ]


def test_a_non_bridge_device_with_the_bridge_name_is_an_error(host, node, namespaces):
    namespaces.veth(node, BRIDGE, namespaces.new("peer"), "eth0")

    with pytest.raises(NetworkError) as caught:
        host.ensure_bridge()

    assert str(caught.value) == f"bridge {BRIDGE}: exists but is a veth, not a bridge"


def test_a_missing_namespace_is_an_error_and_not_created(namespaces):
    missing = f"fwt-{namespaces.tag}-missing"

    with (
        HostNetwork(BRIDGE, GATEWAY, 24, netns=missing) as network,
        pytest.raises(NetworkError, match=f"^netns {missing}: open netlink socket"),
    ):
        network.ensure_bridge()

    assert not Path("/var/run/netns", missing).exists()


# -- TAPs ----------------------------------------------------------------------


def test_tap_is_created_on_the_bridge_up_and_owned_by_the_jail(host, node):
    host.ensure_bridge()

    host.ensure_tap("fw-web", owner=JAIL_UID, group=JAIL_GID)

    tap = link(node, "fw-web")
    assert tap["linkinfo"]["info_kind"] == "tun"
    assert tap["linkinfo"]["info_data"]["type"] == "tap"
    assert "UP" in tap["flags"]
    bridge_index = read_in(node, f"/sys/class/net/{BRIDGE}/ifindex")
    assert read_in(node, "/sys/class/net/fw-web/master/ifindex") == bridge_index
    assert read_in(node, "/sys/class/net/fw-web/owner") == str(JAIL_UID)
    assert read_in(node, "/sys/class/net/fw-web/group") == str(JAIL_GID)
    assert read_in(node, "/sys/class/net/fw-web/brport/hairpin_mode") == "1"


def test_tap_without_owner_is_root_only(host, node):
    host.ensure_bridge()

    host.ensure_tap("fw-web")

    assert read_in(node, "/sys/class/net/fw-web/owner") == "-1"


def test_ensure_tap_twice_keeps_the_same_device(host, node):
    host.ensure_bridge()
    host.ensure_tap("fw-web", owner=JAIL_UID, group=JAIL_GID)
    first = link(node, "fw-web")["ifindex"]

    host.ensure_tap("fw-web", owner=JAIL_UID, group=JAIL_GID)

    tap = link(node, "fw-web")
    assert tap["ifindex"] == first
    assert tap["master"] == BRIDGE
    assert host.taps() == {"fw-web"}


def test_a_tap_on_another_bridge_is_moved_to_ours(host, node):
    host.ensure_bridge()
    exec_in(node, ["ip", "link", "add", "br-other", "type", "bridge"])
    add_tap(node, "fw-web")
    exec_in(node, ["ip", "link", "set", "fw-web", "master", "br-other"])

    host.ensure_tap("fw-web")

    tap = link(node, "fw-web")
    assert tap["master"] == BRIDGE
    assert "UP" in tap["flags"]


def test_a_tap_with_another_owner_gets_the_jail_owner(host, node):
    host.ensure_bridge()
    host.ensure_tap("fw-web", owner=1, group=1)
    first = link(node, "fw-web")["ifindex"]

    host.ensure_tap("fw-web", owner=JAIL_UID, group=JAIL_GID)

    assert link(node, "fw-web")["ifindex"] == first
    assert read_in(node, "/sys/class/net/fw-web/owner") == str(JAIL_UID)
    assert read_in(node, "/sys/class/net/fw-web/group") == str(JAIL_GID)


def test_a_non_tap_device_with_the_tap_name_is_an_error(host, node, namespaces):
    host.ensure_bridge()
    namespaces.veth(node, "fw-web", namespaces.new("peer"), "eth0")
    add_tap(node, "fw-tun", mode="tun")

    with pytest.raises(NetworkError) as veth:
        host.ensure_tap("fw-web")
    with pytest.raises(NetworkError) as tun:
        host.ensure_tap("fw-tun")

    assert str(veth.value) == "tap fw-web: exists but is a veth, not a TAP"
    assert str(tun.value) == "tap fw-tun: exists but is a tun, not a TAP"


def test_a_tap_needs_the_bridge(host, node):
    with pytest.raises(NetworkError, match=f"^tap fw-web: bridge {BRIDGE} does not"):
        host.ensure_tap("fw-web")

    assert not exists(node, "fw-web")


def test_remove_tap_deletes_it_and_a_missing_one_is_fine(host, node):
    host.ensure_bridge()
    host.ensure_tap("fw-web")

    host.remove_tap("fw-web")
    host.remove_tap("fw-web")

    assert not exists(node, "fw-web")


def test_remove_tap_refuses_to_delete_other_devices(host, node):
    host.ensure_bridge()

    with pytest.raises(NetworkError, match=f"^tap {BRIDGE}: not a TAP"):
        host.remove_tap(BRIDGE)

    assert exists(node, BRIDGE)


def test_taps_lists_only_prefixed_taps(host, node, namespaces):
    host.ensure_bridge()
    host.ensure_tap("fw-web")
    add_tap(node, "fw-leftover")
    add_tap(node, "tap-other")
    add_tap(node, "fw-tun", mode="tun")
    namespaces.veth(node, "fw-veth", namespaces.new("peer"), "eth0")

    assert host.taps() == {"fw-web", "fw-leftover"}
    assert host.taps(prefix="tap-") == {"tap-other"}


@pytest.mark.parametrize(
    "name", ["", "fw-" + "x" * 13, "fw web", "fw/web", "fw:web", "..", "fw-wéb"]
)
def test_invalid_interface_names_are_rejected(host, name):
    with pytest.raises(ValueError, match="is not an interface name"):
        host.ensure_tap(name)
    with pytest.raises(ValueError, match="is not an interface name"):
        host.remove_tap(name)
    with pytest.raises(ValueError, match="is not an interface name"):
        HostNetwork(name, GATEWAY, 24)


def test_a_fifteen_character_name_is_accepted(host, node):
    host.ensure_bridge()

    host.ensure_tap("fw-" + "x" * 12)

    assert host.taps() == {"fw-" + "x" * 12}


# -- traffic -------------------------------------------------------------------

LISTENER = """
import socket, sys
with socket.create_server((sys.argv[1], 8080)) as server:
    server.settimeout(10)
    conn, (peer, _) = server.accept()
    with conn:
        conn.settimeout(5)
        conn.sendall(b"hello " + peer.encode() + b" you said " + conn.recv(64))
"""

CONNECT = """
import socket, time
address = {address!r}
deadline = time.monotonic() + 5
while True:
    try:
        conn = socket.create_connection((address, 8080), timeout=1)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.05)
with conn:
    conn.sendall(b"ping")
    print(conn.recv(128).decode())
"""


def test_a_guest_on_the_bridge_reaches_the_gateway_over_tcp(host, node, namespaces):
    host.ensure_bridge()
    guest = namespaces.new("guest")
    namespaces.veth(guest, "eth0", node, "fw-guest", a_addr=f"{GUEST_IP}/24")
    exec_in(node, ["ip", "link", "set", "fw-guest", "master", BRIDGE])
    listener = popen_in(node, [sys.executable, "-c", LISTENER, GATEWAY])

    try:
        answer = python_in(guest, CONNECT.format(address=GATEWAY), timeout=15)
        assert listener.wait(timeout=10) == 0
    finally:
        listener.kill()
        listener.wait()

    assert answer.stdout.strip() == f"hello {GUEST_IP} you said ping"


def test_parallel_vm_starts_share_one_new_bridge(node: str) -> None:
    """Several VMs starting at once on a node without its bridge yet: each TAP
    comes up on the one bridge (the first start used to race the second one's
    bridge creation and fail with "File exists")."""
    from concurrent.futures import ThreadPoolExecutor

    from pyroute2 import netns as pyroute2_netns

    from nodeagent.config import AgentConfig
    from nodeagent.netsetup import NodeNetwork
    from nodeagent.spec.node import ServiceConfig

    config = AgentConfig(
        node_name="n1", store_type="local", store_dir="/nonexistent",
        vm_bridge=BRIDGE, vm_subnet="172.30.0.0/24", vm_gateway=GATEWAY,
    )  # fmt: skip
    services = [
        ServiceConfig.model_validate(
            {
                "name": f"svc{i}",
                "image": "/i",
                "kernel": "/k",
                "vcpus": 1,
                "memory_mb": 128,
                "kernel_args": "console=ttyS0",
                "network": True,
            }
        )
        for i in range(6)
    ]

    def start_all() -> None:
        pyroute2_netns.setns(node, flags=0)
        network = NodeNetwork(config)
        try:
            # threads made here inherit this thread's namespace
            with ThreadPoolExecutor(len(services)) as pool:
                list(pool.map(network.tap_up, services))
        finally:
            network.close()

    with ThreadPoolExecutor(1) as outer:
        outer.submit(start_all).result()

    for i in range(len(services)):
        assert link(node, f"fw-svc{i}")["master"] == BRIDGE
    assert ipv4_addresses(node, BRIDGE) == [f"{GATEWAY}/24"]
