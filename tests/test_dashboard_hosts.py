"""The node pages: nodes (hosts running agents), one node, and services across nodes.

Nodes are real ``Node`` rows with the reports agents would have sent; what is
published is a node config in a local object store, as the node types page
reads it, with the succeeded run that published it in the database.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone
from pytest_django import Settings

from controlplane.dashboard.hostrows import (
    actual_of,
    desired_of,
    health_check_text,
    parse_time,
    port_texts,
)
from controlplane.models import Node, NodeTransition, Revision
from controlplane.objectstore import LocalStore, etag_of
from tests.dashboard_data import (
    GENERAL_V1,
    SHA_A,
    SHA_C,
    WIRED,
    make_repository,
    make_revision,
    make_user,
)

LABEL = "general-purpose"
PAGES = ["/hosts/", "/hosts/alpha/", "/services/"]


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def service_report(name: str, state: str = "running", **fields: Any) -> dict[str, Any]:
    """A service entry of an agent's report, healthy unless ``fields`` say not."""
    health = {"status": "healthy", "last_checked": None, "failures": 0}
    return {
        "name": name,
        "state": state,
        "pid": 4100 + len(name),
        "guest_ip": "172.16.0.2" if name == "web" else "172.16.0.6",
        "restarts": 0,
        "last_error": "",
        "next_restart_at": None,
        "health": health | {"last_error": ""},
    } | fields


def agent_report(revision: str, services: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``/status`` document an agent on one label sends."""
    return {
        "node": "",
        "last_revision": revision,
        "labels": [LABEL],
        "revisions": {LABEL: revision},
        "services": services,
        "phase": "running",
        "stale": False,
        "stale_reason": "",
    }


def make_node(
    name: str,
    report: dict[str, Any] | None,
    *,
    seen: datetime | None = None,
    labels: list[str] | None = None,
) -> Node:
    """A node as the report endpoint leaves it after ``report`` arrived at ``seen``."""
    seen = seen or timezone.now()
    return Node.objects.create(
        name=name,
        labels=[LABEL] if labels is None else labels,
        last_report=report,
        last_report_at=seen if report else None,
        last_seen_at=seen if report else None,
        agent_version="0.1.0",
    )


def converged_report() -> dict[str, Any]:
    return agent_report(sha256(WIRED), [service_report("web"), service_report("api")])


def drifted_report() -> dict[str, Any]:
    """Still on the previous revision, web crash-looping and api not started."""
    web = service_report(
        "web",
        "crashloop",
        pid=0,
        restarts=4,
        last_error="vm exited with status 1",
        next_restart_at="2030-01-01T00:00:30Z",
    )
    return agent_report(sha256(GENERAL_V1), [web])


@pytest.fixture(autouse=True)
def fast_hashing(settings: Settings) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def publish(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Revision:
    """WIRED published for general-purpose by a run of SHA_C (GENERAL_V1 before).

    The store is named by the environment, which the dashboard reads per request.
    """
    monkeypatch.setenv("FIREWORK_STORE", "local")
    monkeypatch.setenv("FIREWORK_STORE_DIR", str(store_dir))
    LocalStore(store_dir).put(f"nodes/{LABEL}.yaml", WIRED.encode())
    repository = make_repository("ops-config")
    now = timezone.now()
    make_revision(
        repository,
        Revision.Status.SUCCEEDED,
        sha=SHA_A,
        queued=now - timedelta(hours=1),
        outputs={LABEL: GENERAL_V1},
    )
    return make_revision(
        repository,
        Revision.Status.SUCCEEDED,
        sha=SHA_C,
        queued=now - timedelta(minutes=5),
        outputs={LABEL: WIRED},
    )


def make_fleet() -> dict[str, Node]:
    """One node in each state: converged, drifted, stale, never reported."""
    old = timezone.now() - timedelta(minutes=10)
    return {
        "alpha": make_node("alpha", converged_report()),
        "bravo": make_node("bravo", drifted_report()),
        "charlie": make_node("charlie", converged_report(), seen=old),
        "delta": make_node("delta", None),
    }


@pytest.fixture
def published(db: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Revision:
    return publish(tmp_path / "store", monkeypatch)


@pytest.fixture
def fleet(published: Revision) -> dict[str, Node]:
    return make_fleet()


@pytest.fixture
def client_bob(client: Client, db: None) -> Client:
    """A logged-in user who is no operator: the pages only read."""
    client.force_login(make_user("bob"))
    return client


def _rows(html: str, attribute: str, value: str) -> list[str]:
    """Every ``<tr>`` whose ``attribute`` is ``value``."""
    return re.findall(rf'<tr[^>]*{attribute}="{value}"[^>]*>.*?</tr>', html, re.S)


def _row(html: str, attribute: str, value: str) -> str:
    """The first ``<tr>`` whose ``attribute`` is ``value``."""
    rows = _rows(html, attribute, value)
    assert rows, f"no row with {attribute}={value}"
    return rows[0]


@pytest.mark.parametrize("path", PAGES)
def test_pages_send_anonymous_visitors_to_the_login_page(
    client: Client, fleet: dict[str, Node], path: str
) -> None:
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next={path}"


@pytest.mark.parametrize("path", PAGES)
def test_pages_are_read_only_and_never_cached(
    client_bob: Client, fleet: dict[str, Node], path: str
) -> None:
    response = client_bob.get(path)
    assert response.status_code == 200
    assert "no-cache" in response["Cache-Control"]
    assert client_bob.post(path).status_code == 405


def test_unknown_node_is_not_found(client_bob: Client, fleet: dict[str, Node]) -> None:
    assert client_bob.get("/hosts/zulu/").status_code == 404


def test_navigation_names_nodes_and_node_types_apart(
    client_bob: Client, fleet: dict[str, Node]
) -> None:
    html = client_bob.get("/hosts/").content.decode()
    assert '<a href="/hosts/" aria-current="page">Nodes</a>' in html
    assert '<a href="/services/">Services</a>' in html
    assert '<a href="/nodes/">Node types</a>' in html


@pytest.mark.parametrize(
    ("node", "badge"),
    [
        ("alpha", "node-converged"),
        ("bravo", "node-drifted"),
        ("charlie", "node-stale"),
        ("delta", "node-unknown"),
    ],
)
def test_node_list_shows_each_state_as_its_badge(
    client_bob: Client, fleet: dict[str, Node], node: str, badge: str
) -> None:
    html = client_bob.get("/hosts/").content.decode()
    row = _row(html, "data-node", node)
    assert f'<a href="/hosts/{node}/">{node}</a>' in row
    assert f'class="badge {badge}"' in row


def test_stale_node_never_looks_green(
    client_bob: Client, fleet: dict[str, Node]
) -> None:
    # Its last report was all healthy and converged, but it is 10 minutes old.
    shown = [
        *_rows(client_bob.get("/hosts/").content.decode(), "data-node", "charlie"),
        *_rows(client_bob.get("/services/").content.decode(), "data-node", "charlie"),
        client_bob.get("/hosts/charlie/", {"fragment": "1"}).content.decode(),
    ]
    assert len(shown) == 4  # its row, its two services, its detail
    for html in shown:
        assert "node-stale" in html
        assert "node-converged" not in html and "service-ok" not in html
    css = (Path(__file__).parent.parent / "static" / "firework.css").read_text()
    grey = re.search(r"\.node-stale, \.node-unknown \{([^}]*)\}", css)
    assert grey and "var(--idle" in grey.group(1) and "--ok" not in grey.group(1)


def test_node_list_compares_applied_and_published_revisions(
    client_bob: Client, fleet: dict[str, Node]
) -> None:
    html = client_bob.get("/hosts/").content.decode()
    alpha = _row(html, "data-node", "alpha")
    assert 'class="revision"' in alpha
    assert sha256(WIRED)[:12] in alpha
    assert SHA_C[:12] in alpha
    bravo = _row(html, "data-node", "bravo")
    assert 'class="revision mismatch"' in bravo
    assert sha256(GENERAL_V1)[:12] in bravo  # applied
    # A revision that is no published one cannot tell its kind: the ETag is shown.
    assert etag_of(WIRED.encode()).strip('"')[:12] in bravo  # published
    assert SHA_A[:12] in bravo  # the commit it still runs


def test_node_list_counts_services_by_status(
    client_bob: Client, fleet: dict[str, Node]
) -> None:
    response = client_bob.get("/hosts/")
    counts = {row["view"].name: row["counts"] for row in response.context["rows"]}
    assert counts["alpha"] == {"ok": 2, "unhealthy": 0, "failed": 0, "missing": 0}
    assert counts["bravo"] == {"ok": 0, "unhealthy": 0, "failed": 1, "missing": 1}
    bravo = _row(response.content.decode(), "data-node", "bravo")
    cells = re.findall(r'<td class="num[^"]*">(\d+)</td>', bravo)
    assert cells == ["0", "0", "1", "1"]


def test_node_detail_shows_desired_next_to_actual(
    client_bob: Client, fleet: dict[str, Node]
) -> None:
    html = client_bob.get("/hosts/bravo/").content.decode()
    assert "not running on the node" in html
    web = _row(html, "data-service", "web")
    assert 'class="badge service-failed"' in web
    assert "state crashloop: vm exited with status 1" in web
    desired, actual = web.split('class="actual"')
    for text in ["/var/lib/images/web-rootfs.ext4", "512 MiB", "8080 → 80"]:
        assert text in desired
    assert "http :80/healthz every 10s, timeout 5s, 3 retries" in desired
    for text in ["crashloop", "<dd>4</dd>", "2030-01-01 00:00:30"]:
        assert text in actual
    api = _row(html, "data-service", "api")
    assert 'class="badge service-missing"' in api
    assert "not reported by the agent" in api


def test_node_detail_shows_reasons_and_newest_transitions_first(
    client_bob: Client, fleet: dict[str, Node]
) -> None:
    bravo = fleet["bravo"]
    start = timezone.now() - timedelta(hours=1)
    for minute in range(60):
        NodeTransition.objects.create(
            node=bravo,
            service="web",
            field="state",
            old_value=f"old-{minute}",
            new_value=f"new-{minute}",
            at=start + timedelta(minutes=minute),
        )
    response = client_bob.get("/hosts/bravo/")
    shown = response.context["transitions"]
    assert [t.new_value for t in shown[:2]] == ["new-59", "new-58"]
    assert len(shown) == 50
    html = response.content.decode()
    assert "new-10" in html and "new-9<" not in html
    reasons = response.context["view"].reasons
    assert any("runs revision" in reason for reason in reasons)
    assert all(reason in html for reason in reasons)


def test_services_view_says_which_commit_runs_where(
    client_bob: Client, fleet: dict[str, Node]
) -> None:
    response = client_bob.get("/services/")
    services = response.context["services"]
    groups = {s.name: [p.node.name for p in s.placements] for s in services}
    # delta never reported, but its label says it should run both.
    everywhere = ["alpha", "bravo", "charlie", "delta"]
    assert groups == {"api": everywhere, "web": everywhere}
    html = response.content.decode()
    alpha_web = _row(html, 'data-service="web" data-node', "alpha")
    assert 'class="badge service-ok"' in alpha_web
    assert SHA_C[:12] in alpha_web
    bravo_web = _row(html, 'data-service="web" data-node', "bravo")
    assert "mismatch" in bravo_web and SHA_A[:12] in bravo_web


@pytest.mark.parametrize("path", PAGES)
def test_fragment_is_only_the_live_part(
    client_bob: Client, fleet: dict[str, Node], path: str
) -> None:
    page = client_bob.get(path).content.decode()
    fragment = client_bob.get(path, {"fragment": "1"}).content.decode()
    assert "<html" not in fragment and "<nav" not in fragment
    assert "autorefresh.js" not in fragment
    assert "<table" in fragment
    assert 'data-refresh-seconds="5"' in page
    assert "autorefresh.js" in page


def test_pages_keep_scripts_out_of_the_html(
    client_bob: Client, fleet: dict[str, Node]
) -> None:
    html = client_bob.get("/hosts/").content.decode()
    scripts = re.findall(r"<script[^>]*>(.*?)</script>", html, re.S)
    assert scripts == [""]
    assert client_bob.get("/static/autorefresh.js").status_code == 200


def test_empty_fleet_says_how_nodes_appear(
    client_bob: Client, published: Revision
) -> None:
    assert b"No node has enrolled yet" in client_bob.get("/hosts/").content
    assert b"No node runs or should run" in client_bob.get("/services/").content


def test_a_node_type_with_nothing_published_or_applied_is_no_mismatch(
    client_bob: Client, published: Revision
) -> None:
    Node.objects.create(name="fresh", labels=["nothing-here"])
    html = client_bob.get("/hosts/fresh/").content.decode()
    assert "nothing published or applied" in html
    assert "mismatch" not in html and "≠" not in html


def test_alice_the_operator_sees_the_same_pages(
    client: Client, fleet: dict[str, Node]
) -> None:
    alice = User.objects.create_superuser("alice", "", "x")
    client.force_login(alice)
    assert client.get("/hosts/alpha/").status_code == 200


@pytest.mark.parametrize(
    ("check", "text"),
    [
        (None, ""),
        ("http", ""),
        ({"type": "tcp", "port": 9000}, "tcp :9000"),
        (
            {"type": "http", "port": 80, "path": "/healthz", "interval": "10s"},
            "http :80/healthz every 10s",
        ),
        (
            {
                "type": "tcp",
                "port": 22,
                "interval": "5s",
                "timeout": "1s",
                "retries": 2,
            },
            "tcp :22 every 5s, timeout 1s, 2 retries",
        ),
    ],
)
def test_health_check_text(check: object, text: str) -> None:
    assert health_check_text(check) == text


def test_port_texts_skip_what_is_not_a_port_forward() -> None:
    forwards = [
        {"host_port": 8080, "vm_port": 80},
        {"host_port": 5353, "vm_port": 53, "protocol": "udp"},
        "8080:80",
    ]
    assert port_texts(forwards) == ["8080 → 80", "5353 → 53/udp"]
    assert port_texts(None) == []


def test_odd_report_entries_still_render() -> None:
    actual = actual_of(
        {"state": "running", "pid": 0, "restarts": "x", "health": "ok", "env": {}}
    )
    assert actual is not None
    assert (actual.state, actual.pid, actual.restarts, actual.health) == (
        "running",
        "",
        0,
        "",
    )
    assert actual_of(None) is None
    assert desired_of(None) is None
    assert parse_time("2026-02-05T12:00:00Z") == datetime(2026, 2, 5, 12, tzinfo=UTC)
    assert parse_time("soon") is None


def test_a_service_starting_again_after_a_restart_reads_restarting() -> None:
    again = actual_of({"state": "starting", "pid": 0, "restarts": 2})
    first = actual_of({"state": "starting", "pid": 0, "restarts": 0})
    assert again is not None and again.state == "restarting"
    assert first is not None and first.state == "starting"
