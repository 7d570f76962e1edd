"""No IPv6 crosses the bridge from a guest under link isolation: real traffic.

The namespaces of ``tests/test_nat.py`` (its ``lab`` fixture is imported here):
guests on the node's bridge through veth pairs. They get IPv6 addresses of
their own, as guest kernels give themselves link-local ones, and talk over them.
"""

from __future__ import annotations

import sys
from subprocess import Popen

import pytest

from nodeagent.config import parse_agent_config
from nodeagent.netsetup import ipv6_rules_for
from nodeagent.network.guard6 import Ipv6Guard
from tests.netns import exec_in, popen_in
from tests.test_nat import BRIDGE, GUEST_A, GUEST_B, Lab, lab, rules  # noqa: F401

NODE6, A6, B6 = "fd00:77::1", "fd00:77::2", "fd00:77::3"

# An IPv6 TCP server answering "<name>" once per connection.
SERVER6 = """
import socket, sys
server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("::", int(sys.argv[2])))
server.listen()
print("ready", flush=True)
while True:
    conn, _ = server.accept()
    conn.sendall(sys.argv[1].encode())
    conn.close()
"""

# Connect with a 1 s budget; print what came back or the error's class name.
FETCH6 = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1) as s:
        print(s.recv(100).decode())
except OSError as exc:
    print(type(exc).__name__)
"""


def serve6(scene: Lab, ns: str, name: str, port: int) -> Popen[bytes]:
    log = scene.logs / f"{name}6.log"
    proc = popen_in(ns, [sys.executable, "-c", SERVER6, name, str(port)], log=log)
    scene.servers.append(proc)
    for _ in range(100):
        if "ready" in log.read_text():
            return proc
        exec_in(ns, ["sleep", "0.05"])
    raise AssertionError(f"{name} not ready: {log.read_text()}")


def fetch6(ns: str, host: str, port: int) -> str:
    done = exec_in(ns, [sys.executable, "-c", FETCH6, host, str(port)])
    return done.stdout.strip()


def add6(ns: str, device: str, address: str) -> None:
    exec_in(ns, ["ip", "-6", "addr", "add", f"{address}/64", "dev", device, "nodad"])


@pytest.fixture
def lab6(lab: Lab) -> Lab:  # noqa: F811 - the imported fixture
    """Two guests and the node with IPv6 addresses, a server on each."""
    guest_b = lab.add_guest("guest-b", GUEST_B, "vguest-b")
    add6(lab.guest_a, "eth0", A6)
    add6(guest_b, "eth0", B6)
    add6(lab.node, BRIDGE, NODE6)
    serve6(lab, guest_b, "guest-b", 80)
    serve6(lab, lab.node, "node", 9100)
    return lab


def guard(scene: Lab) -> Ipv6Guard:
    return Ipv6Guard(BRIDGE, prefix=["ip", "netns", "exec", scene.node])


def test_without_the_guard_guests_reach_each_other_and_the_node_over_ipv6(
    lab6: Lab,
) -> None:
    lab6.iptables.apply(rules(isolation="links"))  # IPv4 isolation alone
    assert fetch6(lab6.guest_a, B6, 80) == "guest-b"
    assert fetch6(lab6.guest_a, NODE6, 9100) == "node"


def test_the_guard_stops_ipv6_from_guests_and_leaves_ipv4_links(lab6: Lab) -> None:
    lab6.iptables.apply(rules(isolation="links"))
    assert guard(lab6).sync(True) is True

    assert fetch6(lab6.guest_a, B6, 80) == "TimeoutError"
    assert fetch6(lab6.guest_a, NODE6, 9100) == "TimeoutError"
    assert lab6.fetch(lab6.guest_a, GUEST_A, 80) == "guest-a:80"  # itself, IPv4


def test_sync_is_idempotent_and_turning_it_off_removes_everything(lab6: Lab) -> None:
    ip6 = guard(lab6)
    assert ip6.sync(True) is True
    assert ip6.sync(True) is False
    saved = exec_in(lab6.node, ["ip6tables-save"]).stdout
    assert saved.count("-j FIREWORK-FORWARD") == 1
    assert saved.count("-j FIREWORK-INPUT") == 1

    assert ip6.sync(False) is True
    assert ip6.sync(False) is False
    assert "FIREWORK" not in exec_in(lab6.node, ["ip6tables-save"]).stdout
    assert fetch6(lab6.guest_a, B6, 80) == "guest-b"


def test_rules_flushed_by_hand_come_back(lab6: Lab) -> None:
    ip6 = guard(lab6)
    ip6.sync(True)
    exec_in(lab6.node, ["ip6tables", "-F", "FIREWORK-FORWARD"])

    assert ip6.sync(True) is True
    assert fetch6(lab6.guest_a, B6, 80) == "TimeoutError"


def test_the_plan_shows_the_guard_only_under_link_isolation() -> None:
    local = {"store_type": "local", "store_dir": "/srv/configs", "node_name": "n"}
    isolated, _ = parse_agent_config({**local, "vm_isolation": "links"})
    open_, _ = parse_agent_config(local)

    assert ipv6_rules_for(isolated) == [
        "-t filter -A FIREWORK-FORWARD -i br-firework -j DROP",
        "-t filter -A FIREWORK-INPUT -i br-firework -j DROP",
    ]
    assert ipv6_rules_for(open_) == []
