"""What the node agent costs: an idle tick, its memory, and each VM start.

Run: ``python bench/agent_tick.py [--services 100] [--starts 50] [--seconds 10]``.

A real ``firework-agent run`` process with a local store and the Firecracker
test double (one real process per VM, started by the real driver):

1. ``--starts`` services are published to an empty node; the agent's own CPU
   time (utime + stime of its process, VMMs excluded) spent until all run,
   divided by the number of VMs, is the per-VM start overhead. The double's own
   start-up (a Python interpreter) is the VMM's time and is not counted.
2. The node grows to ``--services``; once all run, the agent ticks every 100 ms
   with nothing to do for ``--seconds``: CPU per idle tick (CPU delta over the
   tick count from ``/metrics``) and the agent's resident memory (VmRSS, VmHWM).

Targets: <= 10 ms CPU per idle tick, <= 60 MB RSS, <= 20 ms per VM start.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.agentsupport import AgentProcess, Node
from tests.fcdouble.testing import wait_for

TARGET_IDLE_TICK_MS = 10.0
TARGET_RSS_MB = 60.0
TARGET_START_OVERHEAD_MS = 20.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` alone (children not included)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of ``pid`` in MB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def ratio(value: float, target: float) -> str:
    """``value`` as a share of its target (below 1.0 meets it)."""
    return f"{value / target:.2f}x of target {target:g}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--starts", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="firework-bench-agent-"))
    node = Node(root, label="bench")
    shorts = [f"s{i:03d}" for i in range(max(args.services, args.starts))]
    os.environ["FIREWORK_PYTHON"] = sys.executable
    try:
        node.publish([])
        node.write_config(
            poll_interval="100ms",
            vm_subnet="172.31.0.0/22",
            vm_gateway="172.31.0.1",
            action_parallelism=4,
            vm_start_timeout="30s",
        )
        agent = node.start_agent()
        start_overhead(node, agent, shorts[: args.starts])
        idle(node, agent, shorts[: args.services], args.seconds)
        agent.terminate()
    finally:
        node.cleanup()
        shutil.rmtree(root, ignore_errors=True)
    return 0


def all_running(agent: AgentProcess, names: list[str], timeout: float) -> None:
    """Wait for ``names`` to run, asking the agent twice a second only.

    Every ``/status`` costs the agent CPU too; polling it fast would bill the
    bench's own curiosity to the agent.
    """
    deadline = time.monotonic() + timeout
    while True:
        services = agent.services()
        if all(services.get(n, {}).get("state") == "running" for n in names):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"not all running after {timeout} s\n{agent.tail()}")
        time.sleep(0.5)


def start_overhead(node: Node, agent: AgentProcess, shorts: list[str]) -> None:
    before_cpu = cpu_seconds(agent.proc.pid)
    before = time.monotonic()
    node.publish([node.service(s) for s in shorts])
    all_running(agent, [node.name(s) for s in shorts], timeout=600)
    wall = time.monotonic() - before
    cpu_ms = (cpu_seconds(agent.proc.pid) - before_cpu) * 1000 / len(shorts)
    print(f"start: {len(shorts)} VMs running after {wall:.1f} s wall")
    print(
        f"start: agent CPU per VM start {cpu_ms:.1f} ms "
        f"({ratio(cpu_ms, TARGET_START_OVERHEAD_MS)} ms)"
    )


def idle(node: Node, agent: AgentProcess, shorts: list[str], seconds: float) -> None:
    node.publish([node.service(s) for s in shorts])
    all_running(agent, [node.name(s) for s in shorts], timeout=600)
    # settle: the ticks right after starting VMs are not idle ones
    first = agent.ticks()
    wait_for(lambda: agent.ticks() >= first + 5, timeout=30, what="settling ticks")
    pid = agent.proc.pid
    ticks0, cpu0 = agent.ticks(), cpu_seconds(pid)
    time.sleep(seconds)
    ticks1, cpu1 = agent.ticks(), cpu_seconds(pid)
    per_tick = (cpu1 - cpu0) * 1000 / max(1, ticks1 - ticks0)
    mem = memory_mb(pid)
    print(
        f"idle: {len(shorts)} services, {ticks1 - ticks0} ticks in {seconds:g} s, "
        f"CPU per tick {per_tick:.2f} ms ({ratio(per_tick, TARGET_IDLE_TICK_MS)} ms)"
    )
    print(
        f"memory: agent RSS {mem['VmRSS']:.1f} MB, peak {mem['VmHWM']:.1f} MB "
        f"({ratio(mem['VmRSS'], TARGET_RSS_MB)} MB)"
    )


if __name__ == "__main__":
    sys.exit(main())
