"""The agent's host networking for real, inside namespaces this test creates.

The agent runs as a process inside a "node" namespace: it creates the bridge,
the TAPs and its iptables chains there. A "guest" namespace plugged into the
bridge with the service's guest IP stands in for the VM (the Firecracker double
has no network) and serves HTTP; a "client" namespace plays another host.
"""

from __future__ import annotations

import json

from nodeagent.naming import tap_name
from tests.agentsupport import Node
from tests.conftest import stop_process_group
from tests.fcdouble.testing import wait_for
from tests.netns import Namespaces, exec_in
from tests.nsagent import (
    BRIDGE,
    GATEWAY,
    UPLINK,
    NsAgent,
    fetch,
    plug_guest,
    ruleset,
    serve_guest,
)


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
    server = serve_guest(ns["guest"], ns["guest"], node.root / "control")
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


def ip6_rules(ns: str) -> list[str]:
    """The agent's ip6tables chains, rules and hooks, counters left out."""
    text = exec_in(ns, ["ip6tables-save", "-t", "filter"]).stdout
    return [line for line in text.splitlines() if "FIREWORK" in line]


def test_link_isolation_filters_bridged_frames_and_guards_ipv6(
    net: tuple[Node, NsAgent, dict[str, str]],
) -> None:
    node, agent, ns = net
    web = node.name("web")
    node.publish([node.service("web")])
    # Bridged frames skipping the filter rules would make isolation a sham.
    for family in ("iptables", "ip6tables"):
        sysctl = f"/proc/sys/net/bridge/bridge-nf-call-{family}"
        exec_in(ns["node"], ["sh", "-c", f"echo 0 > {sysctl}"])
    agent.start(vm_isolation="links")
    wait_for(lambda: agent.running([web]), timeout=30, what="vm running")
    wait_for(lambda: len(ip6_rules(ns["node"])) == 6, timeout=10, what="ipv6 guard")
    assert sorted(ip6_rules(ns["node"])) == sorted(
        [
            ":FIREWORK-FORWARD - [0:0]",
            ":FIREWORK-INPUT - [0:0]",
            f"-A FIREWORK-FORWARD -i {BRIDGE} -j DROP",
            f"-A FIREWORK-INPUT -i {BRIDGE} -j DROP",
            "-A FORWARD -j FIREWORK-FORWARD",
            "-A INPUT -j FIREWORK-INPUT",
        ]
    )
    for family in ("iptables", "ip6tables"):
        sysctl = f"/proc/sys/net/bridge/bridge-nf-call-{family}"
        assert exec_in(ns["node"], ["cat", sysctl]).stdout.strip() == "1"

    agent.stop()
    agent.start(vm_isolation="none")
    wait_for(lambda: agent.running([web]), timeout=30, what="adopted")
    wait_for(lambda: not ip6_rules(ns["node"]), timeout=10, what="guard removed")
