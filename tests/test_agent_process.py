"""``firework-agent run`` and ``plan`` as real processes, killed and restarted.

The VMMs are Firecracker test doubles in their own sessions, started by the real
driver; the agent's API, signals, stores and state directory are all real.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agentsupport import REPO, Node
from tests.conftest import S3Server, start_s3_server, stop_process_group
from tests.fcdouble.testing import alive, wait_for


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path)
    yield n
    n.cleanup()


def test_kill_9_and_restart_adopts_every_vm_with_the_same_pids(node: Node) -> None:
    names = [node.name(s) for s in ("api", "db", "web")]
    node.publish([node.service(s) for s in ("api", "db", "web")])
    node.write_config()
    agent = node.start_agent()
    pids = agent.wait_running(names)
    assert node.vmm_pids() == pids

    agent.kill9()
    assert node.vmm_pids() == pids  # the VMMs outlive the agent
    again = node.start_agent()
    assert again.wait_running(names) == pids
    # a few more ticks: still no new Firecracker process, nothing restarted
    first = again.ticks()
    wait_for(lambda: again.ticks() >= first + 3, what="three more ticks")
    status = again.status()
    assert node.vmm_pids() == pids
    assert all(s["restarts"] == 0 for s in status["services"])
    assert status["phase"] == "running"


def test_removing_a_service_keeps_the_others_addresses_and_vms(node: Node) -> None:
    """Addresses go by sorted name, but a VM keeps the one it has: removing
    ``api`` (which sorts first) restarts nothing else, and neither does an agent
    restart afterwards (its first config is resolved against the VMs on disk)."""
    api, web = node.name("api"), node.name("web")
    node.publish([node.service("api"), node.service("web")])
    node.write_config()
    agent = node.start_agent()
    pids = agent.wait_running([api, web])
    web_ip = agent.services()[web]["guest_ip"]
    assert agent.services()[api]["guest_ip"] < web_ip

    node.publish([node.service("web")])
    wait_for(lambda: api not in agent.services(), timeout=20, what="api removed")
    assert agent.services()[web]["pid"] == pids[web]
    assert agent.services()[web]["guest_ip"] == web_ip

    agent.kill9()
    again = node.start_agent()
    assert again.wait_running([web]) == {web: pids[web]}
    first = again.ticks()
    wait_for(lambda: again.ticks() >= first + 3, what="three more ticks")
    assert again.services()[web]["pid"] == pids[web]
    assert again.services()[web]["guest_ip"] == web_ip


def test_a_killed_vmm_is_recreated_on_the_next_tick(node: Node) -> None:
    web = node.name("web")
    node.publish([node.service("web")])
    node.write_config()
    agent = node.start_agent()
    old = agent.wait_running([web])[web]
    os.kill(old, signal.SIGKILL)

    def replaced() -> bool:
        service = agent.services()[web]
        return service["state"] == "running" and service["pid"] not in (0, old)

    wait_for(replaced, timeout=10, what=f"{web} recreated\n{agent.tail()}")
    service = agent.services()[web]
    assert service["restarts"] == 1
    assert node.vmm_pids() == {web: service["pid"]}


def test_sigterm_leaves_vms_running_and_stop_vms_stops_them(node: Node) -> None:
    web = node.name("web")
    node.publish([node.service("web")])
    node.write_config()
    agent = node.start_agent()
    pid = agent.wait_running([web])[web]
    assert agent.terminate() == 0
    assert alive(pid)

    agent = node.start_agent("--stop-vms")
    assert agent.wait_running([web]) == {web: pid}
    assert agent.terminate() == 0
    wait_for(lambda: not alive(pid), what="vmm stopped by --stop-vms")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FIREWORK_PYTHON": sys.executable, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "nodeagent.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_run_once_converges_and_exits_with_the_outcome(node: Node) -> None:
    node.publish([node.service("web")])
    config = node.write_config()
    done = run_cli("run", "--config", str(config), "--once")
    assert done.returncode == 0, done.stderr
    assert list(node.vmm_pids()) == [node.name("web")]
    assert f"vm running service={node.name('web')}" in done.stderr

    node.publish([node.service("web"), node.service("big")])
    config = node.write_config(vm_subnet="172.31.0.0/30", vm_gateway="172.31.0.1")
    failed = run_cli("run", "--config", str(config), "--once")
    assert failed.returncode == 1
    assert "no free address" in failed.stderr


def test_run_with_a_bad_agent_config_names_the_key(node: Node) -> None:
    config = node.write_config(poll_interval="soon")
    done = run_cli("run", "--config", str(config), "--once")
    assert done.returncode == 2
    assert "poll_interval" in done.stderr
    assert node.vmm_pids() == {}


def test_plan_shows_the_resolved_services_and_touches_nothing(node: Node) -> None:
    web, db = node.name("web"), node.name("db")
    node.publish(
        [
            node.service(
                "web",
                links=[{"service": db, "env": "DB_URL", "port": 5432}],
                port_forwards=[{"host_port": 8080, "vm_port": 80}],
            ),
            node.service("db"),
        ]
    )
    config = node.write_config()
    done = run_cli("plan", "--config", str(config))
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    services = {s["name"]: s for s in document["services"]}
    assert services[db]["guest_ip"] == "172.31.0.2"
    assert services[web]["guest_ip"] == "172.31.0.3"
    assert services[web]["guest_mac"] == "AA:FC:AC:1F:00:03"
    assert services[web]["tap"].startswith("fw-")
    assert services[web]["env"] == {"DB_URL": "http://172.31.0.2:5432"}
    assert services[web]["port_forwards"] == [{"host_port": 8080, "vm_port": 80}]
    assert (
        "ip=172.31.0.3::172.31.0.1:255.255.255.0::eth0:off"
        in services[web]["kernel_args"]
    )
    assert [(a["kind"], a["service"]) for a in document["actions"]] == [
        ("create", db),
        ("create", web),
    ]
    network = document["network"]
    assert (network["bridge"], network["gateway"]) == ("br-firework", "172.31.0.1")
    assert (
        f"-t nat -A FIREWORK-PREROUTING -p tcp -m tcp --dport 8080 -m comment "
        f'--comment "firework:{web}" -j DNAT --to-destination 172.31.0.3:80'
    ) in network["rules"]
    assert (
        "-t filter -A FIREWORK-FORWARD -d 169.254.169.254/32 -i br-firework -j DROP"
    ) in network["rules"]
    assert network["ipv6_rules"] == []  # no link isolation, no IPv6 guard
    assert not node.state_dir.exists()  # nothing written, nothing started
    assert node.vmm_pids() == {}

    # with the VMs running, the plan is empty; a file given instead plans for it
    assert run_cli("run", "--config", str(config), "--once").returncode == 0
    assert json.loads(run_cli("plan", "--config", str(config)).stdout)["actions"] == []
    other = node.root / "changed.yaml"
    other.write_bytes(node.node_config([node.service("db", vcpus=2)]))
    changed = json.loads(
        run_cli("plan", "--config", str(config), "--node-config", str(other)).stdout
    )
    assert [(a["kind"], a["service"], a["reason"]) for a in changed["actions"]] == [
        ("remove", web, "removed from config"),
        ("recreate", db, "vcpus changed"),
    ]


@pytest.fixture
def own_s3(tmp_path: Path) -> Iterator[tuple[S3Server, list[subprocess.Popen[bytes]]]]:
    """An S3 server of this test alone, so that it can be stopped and restarted."""
    data = tmp_path / "weed"
    data.mkdir()
    server, proc = start_s3_server(data)
    procs = [proc]
    yield server, procs
    for p in procs:
        if p.poll() is None:
            stop_process_group(p)


def test_s3_outage_then_invalid_config_keep_vms_and_report_stale(
    node: Node, own_s3: tuple[S3Server, list[subprocess.Popen[bytes]]]
) -> None:
    server, procs = own_s3
    bucket = "firework-nodes"
    server.admin.create_bucket(Bucket=bucket)
    key = f"nodes/{node.label}.yaml"

    def upload(data: bytes) -> None:
        server.admin.put_object(Bucket=bucket, Key=key, Body=data)

    (node.root / "ak").write_text(server.access_key)
    (node.root / "sk").write_text(server.secret_key)
    web, db = node.name("web"), node.name("db")
    upload(node.node_config([node.service("web"), node.service("db")]))
    node.write_config(
        store_type="s3",
        s3_bucket=bucket,
        s3_endpoint_url=server.endpoint_url,
        s3_access_key_file=str(node.root / "ak"),
        s3_secret_key_file=str(node.root / "sk"),
    )
    agent = node.start_agent()
    pids = agent.wait_running([web, db])

    stop_process_group(procs[0])
    wait_for(lambda: agent.status()["stale"], timeout=20, what=f"stale\n{agent.tail()}")
    status = agent.status()
    assert status["stale_reason"].startswith("config_fetch_failed: ")
    assert status["stale_since"]
    assert node.vmm_pids() == pids

    # The store comes back with an invalid config: still stale, VMs untouched.
    _, proc = start_s3_server(server.log_path.parent, server.ports)
    procs.append(proc)
    upload(node.node_config([node.service("web", vcpus=0), node.service("db")]))
    wait_for(
        lambda: agent.status()["stale_reason"].startswith("config_invalid: "),
        timeout=20,
        what=f"config_invalid\n{agent.tail()}",
    )
    assert f"service {web}" in agent.status()["stale_reason"]
    assert node.vmm_pids() == pids

    # A valid config converges: a new service starts, the others are untouched
    # ("zapi" sorts last, so no other guest's address moves).
    api = node.name("zapi")
    upload(node.node_config([node.service(s) for s in ("web", "db", "zapi")]))
    running = agent.wait_running([web, db, api])
    assert not agent.status()["stale"]
    assert {web: running[web], db: running[db]} == pids


def test_plan_falls_back_to_the_last_good_config_and_lists_errors(
    node: Node,
) -> None:
    node.publish([node.service("web"), node.service("zbig")])
    config = node.write_config(vm_subnet="172.31.0.0/30", vm_gateway="172.31.0.1")
    assert run_cli("run", "--config", str(config), "--once").returncode == 1
    node.publish_raw(b"node: [unclosed")
    done = run_cli("plan", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert "warning: using the last good config" in done.stderr
    document = json.loads(done.stdout)
    assert document["source"] == "last_good"
    assert [s["name"] for s in document["services"]] == [node.name("web")]
    assert document["errors"] == [
        {
            "service": node.name("zbig"),
            "error": f"service {node.name('zbig')}: no free address in "
            "172.31.0.0/30 (1 service fits)",
        }
    ]
    assert document["actions"] == []

    (node.state_dir / "lastgood" / "config.json").unlink()
    failed = run_cli("plan", "--config", str(config))
    assert failed.returncode == 1
    assert failed.stderr.startswith("error: nodes/web-node.yaml: ")
