"""An agent process inside a test's "node" namespace, and guests on its bridge.

The agent creates the bridge, TAPs and rules inside the namespace; its API
listens on the namespace's own loopback, so it is asked from in there. A guest
is a namespace plugged into the bridge with a service's guest IP, standing in
for the VM (the Firecracker double has no network), running a small HTTP
server whose answers the test switches through a control file.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

from tests.agentsupport import Node
from tests.conftest import free_ports
from tests.fcdouble.testing import wait_for
from tests.netns import Namespaces, exec_in, popen_in, python_in

BRIDGE = "br-fwt"
SUBNET = "172.30.0.0/24"
GATEWAY = "172.30.0.1"
UPLINK = "10.77.0.1"
CLIENT = "10.77.0.2"

# argv: name, control file. The control file says "ok" (200) or "fail" (503).
GUEST_SERVER = """
import socketserver, sys
from http.server import BaseHTTPRequestHandler

def mode():
    try:
        with open(sys.argv[2]) as f:
            return f.read().strip()
    except OSError:
        return "ok"

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        ok = mode() == "ok"
        body = (b"hello from " if ok else b"failing: ") + sys.argv[1].encode()
        self.send_response(200 if ok else 503)
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

    def start(self, **config: Any) -> None:
        """Start the agent; ``config`` adds to or overrides its settings."""
        [self.port] = free_ports(1)
        self.node.write_config(
            api_listen_addr=f"127.0.0.1:{self.port}",
            enable_network_setup=True,
            vm_bridge=BRIDGE,
            vm_subnet=SUBNET,
            vm_gateway=GATEWAY,
            **config,
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

    def log_text(self) -> str:
        """The agent's whole log."""
        return (self.node.root / "agent.log").read_text(errors="replace")

    def log(self) -> str:
        return (self.node.root / "agent.log").read_text(errors="replace")[-3000:]


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


def serve_guest(ns: str, name: str, control: Path) -> Any:
    """Start the guest's HTTP server on port 80; the caller stops it."""
    return popen_in(ns, [sys.executable, "-c", GUEST_SERVER, name, str(control)])


def node_with_agent(
    namespaces: Namespaces, root: Path
) -> tuple[Node, NsAgent, dict[str, str]]:
    """Node, client and guest namespaces (client on the node's uplink), a node
    with its files under ``root`` and an agent for it (not started yet)."""
    ns = {role: namespaces.new(role) for role in ("node", "client", "guest")}
    namespaces.veth(
        ns["node"],
        "uplink",
        ns["client"],
        "eth0",
        a_addr=f"{UPLINK}/24",
        b_addr=f"{CLIENT}/24",
    )
    node = Node(root, operator_taps=False)  # the agent makes its own TAPs
    return node, NsAgent(node, ns["node"]), ns
