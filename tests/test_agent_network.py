"""The agent's host networking for real, inside namespaces this test creates.

The agent runs as a process inside a "node" namespace: it creates the bridge,
the TAPs and its iptables chains there. A "guest" namespace plugged into the
bridge with the service's guest IP stands in for the VM (the Firecracker double
has no network) and serves HTTP; a "client" namespace plays another host.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodeagent.naming import tap_name
from tests.agentsupport import Node
from tests.conftest import free_ports, stop_process_group
from tests.fcdouble.testing import wait_for
from tests.netns import Namespaces, exec_in, popen_in, python_in

BRIDGE = "br-fwt"
SUBNET = "172.30.0.0/24"
GATEWAY = "172.30.0.1"
UPLINK = "10.77.0.1"
CLIENT = "10.77.0.2"

GUEST_SERVER = """
import socketserver, sys
from http.server import BaseHTTPRequestHandler

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello from " + sys.argv[1].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    allow_reuse_address = True

Server(("0.0.0.0", 80), Handler).serve_forever()
"""

FETCH = """
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
        print(r.read().decode())
except OSError as exc:
    print("ERROR", exc)
"""


class NsAgent:
    """``firework-agent run`` inside the node namespace; its API asked from there."""

    def __init__(self, node: Node, ns: str) -> None:
        self.node = node
        self.ns = ns
        self.port = 0
        self.proc: Any = None

    def start(self) -> None:
        [self.port] = free_ports(1)
        self.node.write_config(
            api_listen_addr=f"127.0.0.1:{self.port}",
            enable_network_setup=True,
            vm_bridge=BRIDGE,
            vm_subnet=SUBNET,
            vm_gateway=GATEWAY,
        )
        argv = [sys.executable, "-m", "nodeagent.cli", "run", "--config"]
        log = self.node.root / "agent.log"
        self.proc = popen_in(self.ns, [*argv, str(self.node.config_path)], log=log)
        self.node.procs.append(self.proc)
        wait_for(lambda: self.get("/healthz") is not None, timeout=20, what="api")

    def get(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}"
        code = (
            "import sys, urllib.request\n"
            "try:\n"
            f"    print(urllib.request.urlopen({url!r}, timeout=2).read().decode())\n"
            "except OSError:\n"
            "    print('null')\n"
        )
        if self.proc.poll() is not None:
            raise AssertionError(f"agent exited: {self.log()}")
        return json.loads(python_in(self.ns, code).stdout)

    def running(self, names: list[str]) -> bool:
        status = self.get("/status")
        states = {s["name"]: s["state"] for s in (status or {}).get("services", [])}
        return all(states.get(n) == "running" for n in names)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=20) == 0, self.log()

    def log(self) -> str:
        return (self.node.root / "agent.log").read_text(errors="replace")[-3000:]


@pytest.fixture
def net(
    namespaces: Namespaces, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Node, NsAgent, dict[str, str]]]:
    monkeypatch.setenv("FIREWORK_PYTHON", sys.executable)
    node_ns = namespaces.new("node")
    client_ns = namespaces.new("client")
    guest_ns = namespaces.new("guest")
    namespaces.veth(
        node_ns,
        "uplink",
        client_ns,
        "eth0",
        a_addr=f"{UPLINK}/24",
        b_addr=f"{CLIENT}/24",
    )
    node = Node(tmp_path)
    yield (
        node,
        NsAgent(node, node_ns),
        {
            "node": node_ns,
            "client": client_ns,
            "guest": guest_ns,
        },
    )
    node.cleanup()


def plug_guest(namespaces: Namespaces, ns: dict[str, str], ip: str) -> None:
    """Put the guest namespace on the agent's bridge with ``ip``, serving HTTP."""
    namespaces.veth(ns["guest"], "eth0", ns["node"], "vguest", a_addr=f"{ip}/24")
    exec_in(ns["node"], ["ip", "link", "set", "vguest", "master", BRIDGE])
    exec_in(ns["guest"], ["ip", "route", "add", "default", "via", GATEWAY])


def fetch(ns: str, url: str) -> str:
    return python_in(ns, FETCH.replace("sys.argv[1]", repr(url))).stdout.strip()


def ruleset(ns: str) -> list[str]:
    """Our rules and hooks as iptables-save prints them, counters left out."""
    text = exec_in(ns, ["iptables-save"]).stdout
    return [
        line
        for line in text.splitlines()
        if "FIREWORK" in line and not line.startswith(("#", ":"))
    ]


def test_bridge_taps_forwards_and_idempotent_rules(
    net: tuple[Node, NsAgent, dict[str, str]], namespaces: Namespaces
) -> None:
    node, agent, ns = net
    web, api = node.name("web"), node.name("zapi")
    node.publish(
        [
            node.service("web", port_forwards=[{"host_port": 8080, "vm_port": 80}]),
            node.service("zapi", port_forwards=[{"host_port": 8081, "vm_port": 80}]),
        ]
    )
    # a TAP of ours that no service uses, as a crash mid-removal leaves it
    exec_in(ns["node"], ["ip", "tuntap", "add", "fw-stray", "mode", "tap"])
    agent.start()
    wait_for(lambda: agent.running([web, api]), timeout=30, what="vms running")
    stray = exec_in(ns["node"], ["ip", "link", "show", "fw-stray"], check=False)
    assert stray.returncode != 0, "leftover TAP not removed"

    links = exec_in(ns["node"], ["ip", "-j", "-d", "link", "show"]).stdout
    by_name = {link["ifname"]: link for link in json.loads(links)}
    assert "UP" in by_name[BRIDGE]["flags"]  # no carrier until a VM opens a TAP
    for name in (web, api):
        assert by_name[tap_name(name)]["master"] == BRIDGE
    addrs = exec_in(ns["node"], ["ip", "-j", "addr", "show", BRIDGE]).stdout
    assert [
        (a["local"], a["prefixlen"])
        for a in json.loads(addrs)[0]["addr_info"]
        if a["family"] == "inet"
    ] == [(GATEWAY, 24)]

    plug_guest(namespaces, ns, "172.30.0.2")  # web sorts first: .2
    page = f"hello from {ns['guest']}"
    server = popen_in(ns["guest"], [sys.executable, "-c", GUEST_SERVER, ns["guest"]])
    try:
        wait_for(
            lambda: fetch(ns["client"], f"http://{UPLINK}:8080/") == page,
            timeout=10,
            what="port forward from another host",
        )
        assert fetch(ns["node"], "http://127.0.0.1:8080/") == page
        assert fetch(ns["node"], f"http://{UPLINK}:8080/") == page

        before = ruleset(ns["node"])
        assert len(before) == len(set(before))
        for _ in range(2):
            agent.stop()
            agent.start()
            wait_for(lambda: agent.running([web, api]), timeout=30, what="adopted")
            assert ruleset(ns["node"]) == before
        assert fetch(ns["client"], f"http://{UPLINK}:8080/") == page

        # removing the service removes its TAP and its rules
        node.publish(
            [node.service("zapi", port_forwards=[{"host_port": 8081, "vm_port": 80}])]
        )
        wait_for(
            lambda: web not in [s["name"] for s in agent.get("/status")["services"]],
            timeout=20,
            what="web removed",
        )
        wait_for(
            lambda: not any("8080" in line for line in ruleset(ns["node"])),
            timeout=10,
            what="forward rule removed",
        )
        gone = exec_in(ns["node"], ["ip", "link", "show", tap_name(web)], check=False)
        assert gone.returncode != 0
        assert any("8081" in line for line in ruleset(ns["node"]))
        assert fetch(ns["client"], f"http://{UPLINK}:8080/").startswith("ERROR")
    finally:
        stop_process_group(server)
