"""A node for agent tests: images, a local store, an agent config, VMM cleanup.

The VMs are Firecracker test doubles (``tests/fcdouble``), started by the real
driver; everything else (stores, state directory, processes, signals) is real.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import free_ports, stop_process_group
from tests.fcdouble.testing import FIRECRACKER_BIN, kill_group, live_argvs, wait_for
from tests.taps import add_taps, remove_taps, service_taps

REPO = Path(__file__).resolve().parent.parent


class Node:
    """One simulated host: its state dir, images, store dir and agent config."""

    def __init__(
        self, root: Path, label: str = "web-node", *, operator_taps: bool = True
    ) -> None:
        self.root = root
        # Without network setup the agent wants the TAPs to exist already.
        self.operator_taps = operator_taps
        self.taps: set[str] = set()
        self.label = label
        # Unique per test: other suites on this host may run VMs too.
        self.prefix = f"a{uuid.uuid4().hex[:6]}"
        self.state_dir = root / "state"
        self.store_dir = root / "store"
        self.images = root / "images"
        self.images.mkdir(parents=True, exist_ok=True)
        (self.store_dir / "nodes").mkdir(parents=True, exist_ok=True)
        (self.images / "vmlinux").write_bytes(b"x")
        self.config_path = root / "agent.yaml"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.cleanups: list[Callable[[], object]] = []

    def name(self, short: str) -> str:
        """A service name unique to this test."""
        return f"{self.prefix}-{short}"

    def service(self, short: str, **fields: Any) -> dict[str, Any]:
        """A node-config service entry with images that exist.

        Each service has a root drive image of its own (``<short>-rootfs.ext4``):
        the agent refuses two services writing one image.
        """
        image = self.images / f"{short}-rootfs.ext4"
        if not image.exists():
            image.write_bytes(b"x")
        return {
            "name": self.name(short),
            "image": str(image),
            "kernel": str(self.images / "vmlinux"),
            "vcpus": 1,
            "memory_mb": 128,
            "kernel_args": "console=ttyS0 reboot=k panic=1",
            "network": True,
            **fields,
        }

    def node_config(self, services: list[dict[str, Any]]) -> bytes:
        """The YAML of a node config with ``services``, their TAPs made (taps.py)."""
        if self.operator_taps:
            wanted = [tap for tap in service_taps(services) if tap not in self.taps]
            self.taps.update(add_taps(wanted))
        return yaml.safe_dump({"node": self.label, "services": services}).encode()

    def publish(self, services: list[dict[str, Any]]) -> None:
        """Write the node config to the local store."""
        path = self.store_dir / "nodes" / f"{self.label}.yaml"
        path.write_bytes(self.node_config(services))

    def publish_raw(self, data: bytes) -> None:
        """Write arbitrary bytes as the node config (to test invalid ones)."""
        (self.store_dir / "nodes" / f"{self.label}.yaml").write_bytes(data)

    def config(self, **overrides: Any) -> dict[str, Any]:
        """An agent config for the local store; ``overrides`` win."""
        return {
            "node_name": self.label,
            "store_type": "local",
            "store_dir": str(self.store_dir),
            "state_dir": str(self.state_dir),
            "firecracker_bin": str(FIRECRACKER_BIN),
            "poll_interval": "200ms",
            "vm_subnet": "172.31.0.0/24",
            "vm_gateway": "172.31.0.1",
            "vm_stop_timeout": "2s",
            # Tests that need host networking run the agent in a namespace.
            "enable_network_setup": False,
            **overrides,
        }

    def write_config(self, **overrides: Any) -> Path:
        """Write :meth:`config` as the agent's YAML file; returns its path."""
        self.config_path.write_text(yaml.safe_dump(self.config(**overrides)))
        return self.config_path

    def vmm_pids(self) -> dict[str, int]:
        """Live VMM processes of this node's services (jailed or not), by id."""
        prefix = f"{self.prefix}-".encode()
        found: dict[str, int] = {}
        for pid, argv in live_argvs():
            pairs = dict(itertools.pairwise(argv))
            service = pairs.get(b"--id", b"")
            if b"--api-sock" in pairs and service.startswith(prefix):
                found[service.decode()] = pid
        return found

    def start_agent(self, *args: str) -> AgentProcess:
        """``firework-agent run --config <this node's config>`` as a real process."""
        proc = AgentProcess.start(self.config_path, *args)
        self.procs.append(proc.proc)
        return proc

    def cleanup(self) -> None:
        """Stop every agent and every VMM this node started."""
        for proc in self.procs:
            if proc.poll() is None:
                stop_process_group(proc)
        for pid in self.vmm_pids().values():
            kill_group(pid)
        for cleanup in self.cleanups:
            cleanup()
        remove_taps(self.taps)


class AgentProcess:
    """A running ``firework-agent run`` with its HTTP API on a loopback port."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log

    @classmethod
    def start(cls, config_path: Path, *args: str) -> AgentProcess:
        """Start the agent with its API on a free port, in its own session."""
        [port] = free_ports(1)
        config = yaml.safe_load(config_path.read_text())
        config["api_listen_addr"] = f"127.0.0.1:{port}"
        config_path.write_text(yaml.safe_dump(config))
        log = config_path.with_suffix(f".{port}.log")
        env = {
            **os.environ,
            "FIREWORK_PYTHON": sys.executable,
            "PYTHONPATH": str(REPO),
        }
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "nodeagent.cli",
                    "run",
                    "--config",
                    str(config_path),
                    *args,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        agent = cls(proc, port, log)
        wait_for(agent.answers, timeout=20, what=f"agent api on {port}\n{agent.tail()}")
        return agent

    def answers(self) -> bool:
        """True once ``/healthz`` answers."""
        if self.proc.poll() is not None:
            raise AssertionError(
                f"agent exited with {self.proc.returncode}\n{self.tail()}"
            )
        try:
            self.get("/healthz")
        except OSError:
            return False
        return True

    def get(self, path: str) -> Any:
        """GET a JSON document from the agent's API."""
        url = f"http://127.0.0.1:{self.port}{path}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())

    def ticks(self) -> int:
        """Reconcile ticks run so far, from ``/metrics``."""
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        for line in text.splitlines():
            if line.startswith("firework_agent_ticks_total "):
                return int(float(line.split()[1]))
        raise AssertionError("no firework_agent_ticks_total in /metrics")

    def status(self) -> dict[str, Any]:
        """The ``/status`` document."""
        result: dict[str, Any] = self.get("/status")
        return result

    def services(self) -> dict[str, dict[str, Any]]:
        """``/status`` services by name."""
        return {s["name"]: s for s in self.status()["services"]}

    def wait_running(self, names: list[str], timeout: float = 20) -> dict[str, int]:
        """Wait until every one of ``names`` is running; returns their pids."""

        def ready() -> bool:
            services = self.services()
            return all(
                services.get(n, {}).get("state") == "running" and services[n]["pid"] > 0
                for n in names
            )

        wait_for(ready, timeout=timeout, what=f"{names} running\n{self.tail()}")
        services = self.services()
        return {n: services[n]["pid"] for n in names}

    def kill9(self) -> None:
        """SIGKILL the agent alone (not its session: VMMs have their own)."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 20) -> int:
        """SIGTERM the agent and wait for it to exit; returns its exit status."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def tail(self, lines: int = 40) -> str:
        """The end of the agent's log, for failure messages."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""
