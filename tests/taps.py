"""TAP devices an operator would have made, for agents run without network setup.

With ``enable_network_setup: false`` the agent refuses to start a VM whose TAP
does not exist (Firecracker running as root would create a dead one). Agent
tests that run without network setup stand in for the operator here: real TAPs
in the test's current network namespace, with unique names, removed afterwards.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from typing import Any

from nodeagent.naming import tap_name


def add_taps(names: Iterable[str]) -> list[str]:
    """Create the TAPs of ``names`` that do not exist yet; returns those made."""
    made = []
    for name in names:
        done = subprocess.run(
            ["ip", "tuntap", "add", "dev", name, "mode", "tap"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode == 0:
            made.append(name)
        elif "exists" not in done.stderr and "busy" not in done.stderr.lower():
            raise RuntimeError(f"ip tuntap add {name}: {done.stderr.strip()}")
    return made


def remove_taps(names: Iterable[str]) -> None:
    """Delete the TAPs of ``names`` (gone ones are fine)."""
    for name in names:
        subprocess.run(["ip", "link", "del", "dev", name], capture_output=True)


def service_taps(services: Iterable[dict[str, Any]]) -> list[str]:
    """The TAP names the agent resolves for node-config service entries."""
    names = []
    for service in services:
        network = service.get("network")
        if isinstance(network, dict) and network.get("interface"):
            names.append(str(network["interface"]))
        elif network:
            names.append(tap_name(str(service["name"])))
    return names
