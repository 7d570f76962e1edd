"""End to end: a signed push becomes healthy guests on a node, with real parts.

One scene (``tests/e2e/stack.py``) for the whole module: a Git server, the control
plane with Redis and a Celery worker, an S3 server and an agent, all in a network
namespace of their own; the guests are the test guest booted by QEMU behind the
Firecracker double's API. The tests run in order, each a step of one story.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.stack import (
    API_FORWARD,
    GUEST_PORT,
    NODE,
    WEB_FORWARD,
    Scene,
    scene,
    service_specs,
    wait_until,
)
from tests.fcdouble.testing import alive, children


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    workdir = tmp_path_factory.mktemp("e2e")
    with scene(workdir, os.environ.get("DATABASE_URL", "")) as running:
        yield running


def qemu_of(vmm_pid: int) -> tuple[int, list[str]]:
    """The QEMU process a VMM (the Firecracker double) runs, and its argv."""
    for pid in children(vmm_pid):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if argv and argv[0].endswith(b"qemu-system-x86_64"):
            return pid, [a.decode() for a in argv if a]
    raise AssertionError(f"no qemu under vmm {vmm_pid}")


def page(port: int) -> str:
    """The guest's page through a port forward, asked from the node itself."""
    response = httpx.get(f"http://127.0.0.1:{port}/", timeout=5, trust_env=False)
    assert response.status_code == 200, response.text
    return response.text


def node_view(e2e: Scene) -> dict[str, Any]:
    found: dict[str, Any] = e2e.api(f"/api/v1/nodes/{NODE}/")
    return found


def test_a_signed_push_boots_both_guests_and_they_pass_their_checks(
    e2e: Scene,
) -> None:
    revision = e2e.push(service_specs(e2e.guest, e2e.images), "web and api")
    assert revision["status"] == "succeeded", revision

    services = e2e.wait_healthy({"web", "api"})

    for name in ("web", "api"):
        _, argv = qemu_of(services[name]["pid"])
        assert "microvm" in " ".join(argv)
        assert argv[argv.index("-m") + 1].startswith("128")
        assert services[name]["guest_ip"].startswith("172.31.70.")


def test_the_port_forward_returns_the_guest_page_with_the_link_env(
    e2e: Scene,
) -> None:
    services = e2e.agent.services()
    api_ip = services["api"]["guest_ip"]

    text = page(WEB_FORWARD)

    assert f"API_URL=http://{api_ip}:{GUEST_PORT}" in text
    # a value with spaces travels base64-encoded on the kernel command line
    assert "GREETING=hello from web" in text
    assert "ROLE=web" in text
    assert "ROLE=api" in page(API_FORWARD)


def test_the_control_plane_shows_both_services_healthy_on_the_node(
    e2e: Scene,
) -> None:
    def converged() -> dict[str, Any] | None:
        view = node_view(e2e)
        services = {s["name"]: s for s in view["report"]["services"]}
        healthy = all(
            services.get(n, {}).get("health") == "healthy" for n in ("web", "api")
        )
        return view if view["status"] == "converged" and healthy else None

    view = wait_until(converged, 30, "a converged node in the API", e2e.agent)

    assert view["counts"]["ok"] == 2
    # which commit runs where
    listed = e2e.api("/api/v1/services/")
    rows = listed["results"] if isinstance(listed, dict) else listed
    ours = {r["service"]: r for r in rows if r["node"] == NODE}
    assert set(ours) == {"web", "api"}
    sha = e2e.revisions[-1]["commit_sha"]
    assert {r["applied_commit"] for r in ours.values()} == {sha}
    assert {r["status"] for r in ours.values()} == {"ok"}


def test_changing_web_memory_recreates_web_only(e2e: Scene) -> None:
    before = e2e.agent.services()

    e2e.push(service_specs(e2e.guest, e2e.images, web_memory=192), "web: 192 MiB")
    after = e2e.wait_healthy({"web", "api"}, replaced={"web": before["web"]["pid"]})

    assert after["api"]["pid"] == before["api"]["pid"]
    assert after["api"]["restarts"] == before["api"]["restarts"]
    assert not alive(before["web"]["pid"])
    _, argv = qemu_of(after["web"]["pid"])
    assert argv[argv.index("-m") + 1].startswith("192")


def test_removing_api_removes_its_vm_tap_and_nat_rules(e2e: Scene) -> None:
    before = e2e.agent.services()
    api_pid = before["api"]["pid"]
    qemu_pid, _ = qemu_of(api_pid)
    assert f"--dport {API_FORWARD}" in _nat_rules()

    specs = service_specs(e2e.guest, e2e.images, web_memory=192, with_api=False)
    e2e.push(specs, "api retired")
    # web loses its link, so its env changes: it gets a new VM too
    e2e.wait_healthy({"web"}, replaced={"web": before["web"]["pid"]})

    wait_until(lambda: not alive(api_pid) and not alive(qemu_pid), 30, "api gone")
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True)
    assert "fw-api" not in links.stdout

    def without_api() -> str | None:
        rules = _nat_rules()
        return rules if "firework:api" not in rules else None

    rules = wait_until(without_api, 10, "api's NAT rules gone", e2e.agent)
    assert f"--dport {API_FORWARD}" not in rules
    assert f"--dport {WEB_FORWARD}" in rules


def test_a_killed_agent_comes_back_and_adopts_the_running_guest(
    e2e: Scene,
) -> None:
    before = e2e.agent.services()
    web_pid = before["web"]["pid"]
    qemu_pid, _ = qemu_of(web_pid)

    e2e.agent.kill9()
    assert alive(web_pid) and alive(qemu_pid)
    assert "ROLE=web" in page(WEB_FORWARD)  # the guest serves without its agent
    e2e.agent.start()

    after = e2e.wait_healthy({"web"}, timeout=60)
    assert after["web"]["pid"] == web_pid
    assert qemu_of(web_pid)[0] == qemu_pid
    assert any("adoption done adopted=1 " in line for line in e2e.agent.log_lines())
    assert "ROLE=web" in page(WEB_FORWARD)


def _nat_rules() -> str:
    return subprocess.run(
        ["iptables-save", "-t", "nat"], capture_output=True, text=True, check=True
    ).stdout
