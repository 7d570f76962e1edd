"""The agent's iptables chains, checked with real traffic inside test namespaces.

The lab: a "node" namespace with the bridge ``br-fwtest`` (172.30.0.1/24) and
guests on it through veth pairs, a "client" namespace wired to the node
(10.77.0.2 -> 10.77.0.1), and for the metadata tests a "metadata" namespace
holding 169.254.169.254 behind the node. Every packet stays inside them.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen

import pytest

from nodeagent.network.nat import (
    Forward,
    Iptables,
    Link,
    NatError,
    Ruleset,
    build_rules,
)
from tests.conftest import stop_process_group
from tests.netns import Namespaces, exec_in, popen_in

BRIDGE = "br-fwtest"
SUBNET = "172.30.0.0/24"
GUEST_A = "172.30.0.2"
GUEST_B = "172.30.0.3"
NODE_UPLINK = "10.77.0.1"
METADATA_IP = "169.254.169.254"
WEB = Forward(service="web", host_port=8080, guest_ip=GUEST_A, vm_port=80)
NO_ANSWER = ("ConnectionRefusedError", "TimeoutError")

# An HTTP server answering "<name>:<port>" on each port given; it binds through
# socketserver.TCPServer, so HTTPServer's reverse-DNS lookup never runs.
SERVER = """
import http.server, socketserver, sys, threading
name, ports = sys.argv[1], [int(p) for p in sys.argv[3:]]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{name}:{self.server.server_address[1]}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    allow_reuse_address = True
    daemon_threads = True
servers = [Server((sys.argv[2], port), Handler) for port in ports]
for server in servers[1:]:
    threading.Thread(target=server.serve_forever, daemon=True).start()
print("ready", flush=True)
servers[0].serve_forever()
"""

# One GET with a 1 s budget per step; prints the body or the error's class name.
FETCH = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1) as s:
        s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    print(data.partition(b"\\r\\n\\r\\n")[2].decode())
except OSError as exc:
    print(type(exc).__name__)
"""


@dataclass
class Lab:
    """The namespaces of one test and the servers running in them."""

    spaces: Namespaces
    logs: Path
    node: str
    guest_a: str
    client: str
    servers: list[Popen[bytes]] = field(default_factory=list)

    @property
    def iptables(self) -> Iptables:
        """A fresh handle on the node's iptables, as after an agent restart."""
        return Iptables(prefix=["ip", "netns", "exec", self.node])

    def node_cmd(self, *argv: str) -> str:
        """Run a command in the node namespace; its stdout."""
        return exec_in(self.node, argv).stdout

    def add_guest(self, role: str, ip: str, node_if: str) -> str:
        """A guest namespace on the bridge with ``ip`` and a default route."""
        guest = self.spaces.new(role)
        self.spaces.veth(guest, "eth0", self.node, node_if, a_addr=f"{ip}/24")
        self.node_cmd("ip", "link", "set", node_if, "master", BRIDGE)
        exec_in(guest, ["ip", "route", "add", "default", "via", "172.30.0.1"])
        return guest

    def serve(self, ns: str, name: str, *ports: int, bind: str = "0.0.0.0") -> None:
        """Start the HTTP server in ``ns``; return once it listens."""
        log = self.logs / f"{name}.log"
        proc = popen_in(
            ns, [sys.executable, "-c", SERVER, name, bind, *map(str, ports)], log=log
        )
        self.servers.append(proc)
        deadline = time.monotonic() + 5
        while "ready" not in log.read_text():
            assert proc.poll() is None, f"server {name} died: {log.read_text()}"
            assert time.monotonic() < deadline, f"server {name} not ready"
            time.sleep(0.02)

    def fetch(self, ns: str, host: str, port: int) -> str:
        """The body ``host:port`` answers from ``ns``, or the error's name."""
        done = exec_in(ns, [sys.executable, "-c", FETCH, host, str(port)])
        return done.stdout.strip()

    def save(self) -> str:
        """``iptables-save`` of the node without its timestamp comments."""
        text = self.node_cmd("iptables-save")
        return "\n".join(line for line in text.splitlines() if not line.startswith("#"))


@pytest.fixture
def lab(namespaces: Namespaces, tmp_path: Path) -> Iterator[Lab]:
    """Node with bridge, guest A serving on 80 and 81, client on the uplink."""
    node = namespaces.new("node")
    client = namespaces.new("client")
    for sysctl in ("net/ipv4/ip_forward", "net/ipv4/conf/all/route_localnet"):
        exec_in(node, ["sh", "-c", f"echo 1 > /proc/sys/{sysctl}"])
    exec_in(node, ["ip", "link", "add", BRIDGE, "type", "bridge"])
    exec_in(node, ["ip", "addr", "add", "172.30.0.1/24", "dev", BRIDGE])
    exec_in(node, ["ip", "link", "set", BRIDGE, "up"])
    namespaces.veth(
        client, "eth0", node, "uplink", a_addr="10.77.0.2/24", b_addr="10.77.0.1/24"
    )
    lab = Lab(namespaces, tmp_path, node, "", client)
    lab.guest_a = lab.add_guest("guest-a", GUEST_A, "vguest-a")
    lab.serve(lab.guest_a, "guest-a", 80, 81)
    try:
        yield lab
    finally:
        for proc in lab.servers:
            stop_process_group(proc)


def rules(
    forwards: list[Forward] | None = None,
    links: list[Link] | None = None,
    isolation: str = "none",
    block_metadata: bool = True,
) -> Ruleset:
    """The lab node's ruleset; forwards ``web`` 8080 -> guest A:80 by default."""
    return build_rules(
        bridge=BRIDGE,
        subnet=SUBNET,
        out_interface=None,
        forwards=[WEB] if forwards is None else forwards,
        links=links or [],
        isolation="links" if isolation == "links" else "none",
        block_metadata=block_metadata,
    )


def hook_count(save: str, chain: str) -> int:
    """How many built-in chain rules jump to ``chain``."""
    return sum(
        1
        for line in save.splitlines()
        if line.endswith(f"-j {chain}") and not line.startswith("-A FIREWORK-")
    )


# Real traffic


def test_client_reaches_guest_through_forwarded_port(lab: Lab) -> None:
    lab.iptables.apply(rules())

    assert lab.fetch(lab.client, NODE_UPLINK, 8080) == "guest-a:80"


@pytest.mark.parametrize("address", ["127.0.0.1", NODE_UPLINK])
def test_node_itself_reaches_guest_through_forwarded_port(
    lab: Lab, address: str
) -> None:
    lab.iptables.apply(rules())

    assert lab.fetch(lab.node, address, 8080) == "guest-a:80"


def test_a_guest_reaches_its_own_published_port_through_the_node(lab: Lab) -> None:
    lab.iptables.apply(rules())
    # As the agent does for every TAP: a frame may leave by the port it came in.
    lab.node_cmd(
        "ip", "link", "set", "vguest-a", "type", "bridge_slave", "hairpin", "on"
    )

    assert lab.fetch(lab.guest_a, NODE_UPLINK, 8080) == "guest-a:80"


def test_applying_again_or_after_restart_changes_nothing(lab: Lab) -> None:
    ruleset = rules()
    lab.iptables.apply(ruleset)
    first = lab.save()

    lab.iptables.apply(ruleset)
    lab.iptables.apply(ruleset)

    assert lab.save() == first
    for chain in ("PREROUTING", "OUTPUT", "POSTROUTING", "FORWARD", "INPUT"):
        assert hook_count(first, f"FIREWORK-{chain}") == 1
    assert lab.iptables.current() == ruleset
    assert lab.fetch(lab.client, NODE_UPLINK, 8080) == "guest-a:80"


def test_current_shows_drift_and_apply_repairs_it(lab: Lab) -> None:
    ruleset = rules()
    lab.iptables.apply(ruleset)
    lab.node_cmd("iptables", "-t", "nat", "-F", "FIREWORK-PREROUTING")
    lab.node_cmd("iptables", "-t", "nat", "-F", "OUTPUT")

    assert lab.iptables.current() != ruleset
    assert not lab.iptables.hooks_in_place()

    lab.iptables.apply(ruleset)

    assert lab.iptables.current() == ruleset
    assert lab.iptables.hooks_in_place()


def test_removed_forward_closes_the_port(lab: Lab) -> None:
    lab.iptables.apply(rules())
    assert lab.fetch(lab.client, NODE_UPLINK, 8080) == "guest-a:80"

    lab.iptables.apply(rules(forwards=[]))

    assert lab.fetch(lab.client, NODE_UPLINK, 8080) in NO_ANSWER
    assert lab.fetch(lab.node, "127.0.0.1", 8080) in NO_ANSWER
    assert "8080" not in lab.save()
    assert "firework:web" not in lab.save()


@pytest.fixture(params=["metadata-namespace", "metadata-on-node"])
def metadata(lab: Lab, request: pytest.FixtureRequest) -> Lab:
    """An HTTP server on 169.254.169.254:80, behind the node or on it."""
    if request.param == "metadata-on-node":
        lab.node_cmd("ip", "addr", "add", f"{METADATA_IP}/32", "dev", "lo")
        lab.serve(lab.node, "metadata", 80, bind=METADATA_IP)
        return lab
    server = lab.spaces.new("meta")
    lab.spaces.veth(
        server, "eth0", lab.node, "vmeta", a_addr="10.88.0.2/24", b_addr="10.88.0.1/24"
    )
    exec_in(server, ["ip", "addr", "add", f"{METADATA_IP}/32", "dev", "eth0"])
    exec_in(server, ["ip", "route", "add", "default", "via", "10.88.0.1"])
    lab.node_cmd("ip", "route", "add", f"{METADATA_IP}/32", "via", "10.88.0.2")
    lab.serve(server, "metadata", 80, bind=METADATA_IP)
    return lab


def test_guest_cannot_reach_metadata_while_forward_works(metadata: Lab) -> None:
    metadata.iptables.apply(rules(block_metadata=True))

    assert metadata.fetch(metadata.guest_a, METADATA_IP, 80) == "TimeoutError"
    assert metadata.fetch(metadata.client, NODE_UPLINK, 8080) == "guest-a:80"


def test_guest_reaches_metadata_when_not_blocked(metadata: Lab) -> None:
    metadata.iptables.apply(rules(block_metadata=False))

    assert metadata.fetch(metadata.guest_a, METADATA_IP, 80) == "metadata:80"


@pytest.mark.parametrize(
    ("isolation", "a_to_b_80", "a_to_b_81", "b_to_a_80"),
    [
        ("links", "guest-b:80", "TimeoutError", "TimeoutError"),
        ("none", "guest-b:80", "guest-b:81", "guest-a:80"),
    ],
)
def test_isolation_lets_guests_talk_only_over_links(
    lab: Lab, isolation: str, a_to_b_80: str, a_to_b_81: str, b_to_a_80: str
) -> None:
    guest_b = lab.add_guest("guest-b", GUEST_B, "vguest-b")
    lab.serve(guest_b, "guest-b", 80, 81)
    link = Link(service="web", source_ip=GUEST_A, target_ip=GUEST_B, port=80)
    lab.iptables.apply(rules(links=[link], isolation=isolation))

    assert lab.fetch(lab.guest_a, GUEST_B, 80) == a_to_b_80
    assert lab.fetch(lab.guest_a, GUEST_B, 81) == a_to_b_81
    assert lab.fetch(guest_b, GUEST_A, 80) == b_to_a_80
    # Isolation between guests leaves the published port alone.
    assert lab.fetch(lab.client, NODE_UPLINK, 8080) == "guest-a:80"


@pytest.mark.parametrize(
    ("isolation", "guest_to_node"), [("links", "TimeoutError"), ("none", "node:9100")]
)
def test_isolation_keeps_guests_off_the_nodes_own_services(
    lab: Lab, isolation: str, guest_to_node: str
) -> None:
    lab.serve(lab.node, "node", 9100)  # say, a node exporter on every address
    lab.node_cmd(
        "ip", "link", "set", "vguest-a", "type", "bridge_slave", "hairpin", "on"
    )
    lab.iptables.apply(rules(isolation=isolation))

    assert lab.fetch(lab.guest_a, "172.30.0.1", 9100) == guest_to_node
    assert lab.fetch(lab.guest_a, NODE_UPLINK, 9100) == guest_to_node
    # The node still reaches its guests (health checks), and they it back.
    assert lab.fetch(lab.node, GUEST_A, 80) == "guest-a:80"
    assert lab.fetch(lab.client, NODE_UPLINK, 8080) == "guest-a:80"
    # A guest calling a published port through the node is a forward, not input.
    assert lab.fetch(lab.guest_a, NODE_UPLINK, 8080) == "guest-a:80"


def test_remove_leaves_no_chain_or_hook(lab: Lab) -> None:
    lab.iptables.apply(rules())

    lab.iptables.remove()
    lab.iptables.remove()

    assert "FIREWORK" not in lab.save()
    assert lab.fetch(lab.client, NODE_UPLINK, 8080) in NO_ANSWER
    assert lab.iptables.current() == Ruleset({"nat": (), "filter": ()})


def test_rule_iptables_rejects_is_a_nat_error_with_its_stderr(lab: Lab) -> None:
    broken = Ruleset({"filter": ("-A FIREWORK-INPUT -m no-such-match -j DROP",)})

    with pytest.raises(NatError, match=r"restoring table filter: .*no-such-match"):
        lab.iptables.apply(broken)


def test_missing_iptables_binary_is_a_nat_error() -> None:
    iptables = Iptables(save="/nonexistent/iptables-save")

    with pytest.raises(NatError, match="not found"):
        iptables.current()


# Rule generation


def small_rules(**changes: object) -> Ruleset:
    """Rules for two forwards and one link, with ``changes`` to the arguments."""
    arguments: dict[str, object] = {
        "bridge": "fwbr0",
        "subnet": "172.16.0.0/24",
        "out_interface": "eth0",
        "forwards": [
            Forward("web", 8080, "172.16.0.2", 80),
            Forward("api", 9000, "172.16.0.3", 8000),
        ],
        "links": [Link("web", "172.16.0.2", "172.16.0.3", 8000)],
        "isolation": "links",
        "block_metadata": True,
    }
    return build_rules(**(arguments | changes))  # type: ignore[arg-type]


def test_build_rules_gives_exact_lines_sorted_by_service() -> None:
    assert small_rules().lines() == [
        '-t nat -A FIREWORK-PREROUTING -p tcp -m tcp --dport 9000 -m comment --comment "firework:api" -j DNAT --to-destination 172.16.0.3:8000',
        '-t nat -A FIREWORK-PREROUTING -p tcp -m tcp --dport 8080 -m comment --comment "firework:web" -j DNAT --to-destination 172.16.0.2:80',
        '-t nat -A FIREWORK-OUTPUT -p tcp -m tcp --dport 9000 -m comment --comment "firework:api" -j DNAT --to-destination 172.16.0.3:8000',
        '-t nat -A FIREWORK-OUTPUT -p tcp -m tcp --dport 8080 -m comment --comment "firework:web" -j DNAT --to-destination 172.16.0.2:80',
        "-t nat -A FIREWORK-POSTROUTING -s 127.0.0.0/8 -o fwbr0 -j MASQUERADE",
        "-t nat -A FIREWORK-POSTROUTING -s 172.16.0.0/24 -d 172.16.0.0/24 -m conntrack --ctstate DNAT -j MASQUERADE",
        "-t nat -A FIREWORK-POSTROUTING -s 172.16.0.0/24 ! -d 172.16.0.0/24 -o eth0 -j MASQUERADE",
        "-t filter -A FIREWORK-FORWARD -d 169.254.169.254/32 -i fwbr0 -j DROP",
        "-t filter -A FIREWORK-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        '-t filter -A FIREWORK-FORWARD -d 172.16.0.3/32 -o fwbr0 -p tcp -m tcp --dport 8000 -m conntrack --ctstate DNAT -m comment --comment "firework:api" -j ACCEPT',
        '-t filter -A FIREWORK-FORWARD -d 172.16.0.2/32 -o fwbr0 -p tcp -m tcp --dport 80 -m conntrack --ctstate DNAT -m comment --comment "firework:web" -j ACCEPT',
        '-t filter -A FIREWORK-FORWARD -s 172.16.0.2/32 -d 172.16.0.3/32 -i fwbr0 -o fwbr0 -p tcp -m tcp --dport 8000 -m comment --comment "firework:web" -j ACCEPT',
        "-t filter -A FIREWORK-FORWARD -i fwbr0 -o fwbr0 -j DROP",
        "-t filter -A FIREWORK-FORWARD -i fwbr0 ! -o fwbr0 -j ACCEPT",
        "-t filter -A FIREWORK-INPUT -d 169.254.169.254/32 -i fwbr0 -j DROP",
        "-t filter -A FIREWORK-INPUT -i fwbr0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-t filter -A FIREWORK-INPUT -i fwbr0 -j DROP",
    ]


def test_build_rules_without_isolation_uplink_or_metadata_block() -> None:
    ruleset = small_rules(
        forwards=[], isolation="none", out_interface=None, block_metadata=False
    )

    assert ruleset.lines() == [
        "-t nat -A FIREWORK-POSTROUTING -s 127.0.0.0/8 -o fwbr0 -j MASQUERADE",
        "-t nat -A FIREWORK-POSTROUTING -s 172.16.0.0/24 -d 172.16.0.0/24 -m conntrack --ctstate DNAT -j MASQUERADE",
        "-t filter -A FIREWORK-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-t filter -A FIREWORK-FORWARD -i fwbr0 -o fwbr0 -j ACCEPT",
        "-t filter -A FIREWORK-FORWARD -i fwbr0 ! -o fwbr0 -j ACCEPT",
    ]


def test_build_rules_ignores_input_order_and_repeats() -> None:
    forwards = [
        Forward("web", 8081, "172.16.0.2", 80),
        Forward("web", 8080, "172.16.0.2", 80),
    ]
    link = Link("web", "172.16.0.2", "172.16.0.3", 8000)

    one = small_rules(forwards=forwards, links=[link, link])
    other = small_rules(forwards=forwards[::-1], links=[link])

    assert one == other
    assert sum("firework:web" in line for line in one.rules["filter"]) == 2


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {
                "forwards": [
                    Forward("web", 8080, "172.16.0.2", 80),
                    Forward("api", 8080, "172.16.0.3", 80),
                ]
            },
            "services api and web: both forward host_port 8080",
        ),
        (
            {
                "forwards": [
                    Forward("web", 8080, "172.16.0.2", 80),
                    Forward("web", 8080, "172.16.0.2", 81),
                ]
            },
            "service web: host_port 8080 used twice",
        ),
        ({"bridge": "br0 -j ACCEPT"}, "bridge: 'br0 -j ACCEPT' is not an interface"),
        ({"bridge": "-j"}, "bridge: '-j' is not an interface"),
        ({"out_interface": "a" * 16}, "out_interface: 'aaaa"),
        ({"subnet": "172.16.0.1/24"}, "subnet: '172.16.0.1/24' is not an IPv4"),
        ({"isolation": "all"}, "isolation: must be one of none, links"),
        (
            {"forwards": [Forward("web", 0, "172.16.0.2", 80)]},
            "service web: host_port must be 1..65535, got 0",
        ),
        (
            {"forwards": [Forward("web", 8080, "172.16.0.2", 65536)]},
            "service web: vm_port must be 1..65535, got 65536",
        ),
        (
            {"forwards": [Forward("web", "8080 -j ACCEPT", "172.16.0.2", 80)]},  # type: ignore[arg-type]
            "service web: host_port must be 1..65535, got '8080 -j ACCEPT'",
        ),
        (
            {"forwards": [Forward("web", True, "172.16.0.2", 80)]},
            "service web: host_port must be 1..65535, got True",
        ),
        (
            {"forwards": [Forward("web", 8080, "172.16.0.2 -j ACCEPT", 80)]},
            "service web: guest_ip '172.16.0.2 -j ACCEPT' is not an IPv4 address",
        ),
        (
            {"forwards": [Forward("web", 8080, "10.0.0.2", 80)]},
            "service web: guest_ip 10.0.0.2 is outside subnet 172.16.0.0/24",
        ),
        (
            {"forwards": [Forward('web" -j ACCEPT', 8080, "172.16.0.2", 80)]},
            "service 'web\" -j ACCEPT': name is not a DNS label",
        ),
        (
            {"links": [Link("web", "172.16.0.2", "::1", 80)]},
            "service web: target_ip '::1' is not an IPv4 address",
        ),
        (
            {"links": [Link("web", "172.16.0.2", "172.16.0.3", -1)]},
            "service web: port must be 1..65535, got -1",
        ),
    ],
)
def test_build_rules_rejects_bad_input_naming_the_field(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        small_rules(**changes)


def test_apply_refuses_rules_for_chains_that_are_not_ours() -> None:
    iptables = Iptables(restore="/nonexistent/iptables-restore")
    foreign = Ruleset({"filter": ("-A INPUT -j ACCEPT",)})
    smuggled = Ruleset({"nat": ("-A FIREWORK-OUTPUT -j ACCEPT\nCOMMIT",)})

    for ruleset in (foreign, smuggled):
        with pytest.raises(ValueError, match="is not for our chains"):
            iptables.apply(ruleset)
