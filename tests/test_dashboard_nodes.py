"""The node types page: node configs in the object store and who published them."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.test import Client
from pytest_django import Settings

from controlplane.models import Revision
from controlplane.objectstore import LocalStore, etag_of
from tests.conftest import S3Bucket
from tests.dashboard_data import (
    COMPUTE,
    GENERAL_PAIR,
    SHA_B,
    WIRED,
    make_repository,
    make_revision,
)

# The api service's env holds markup the page must escape.
GENERAL = GENERAL_PAIR + '    env:\n      GREETING: "<b>hello</b>"\n'


@pytest.fixture(autouse=True)
def fast_hashing(settings: Settings) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def alice(db: None) -> User:
    return User.objects.create_superuser("alice", "", "correct-horse-battery")


@pytest.fixture
def client_alice(client: Client, alice: User) -> Client:
    client.force_login(alice)
    return client


@pytest.fixture
def local_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalStore:
    """The store the dashboard reads, configured through the environment."""
    root = tmp_path / "store"
    monkeypatch.setenv("FIREWORK_STORE", "local")
    monkeypatch.setenv("FIREWORK_STORE_DIR", str(root))
    return LocalStore(root)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_dashboard_lists_published_node_configs(
    client_alice: Client, local_store: LocalStore
) -> None:
    local_store.put("nodes/general-purpose.yaml", GENERAL.encode())
    local_store.put("nodes/compute.yaml", COMPUTE.encode())

    response = client_alice.get("/nodes/")

    assert response.status_code == 200
    nodes = {node.node_type: node for node in response.context["nodes"]}
    assert sorted(nodes) == ["compute", "general-purpose"]
    general = nodes["general-purpose"]
    assert [s.name for s in general.services] == ["web", "api"]
    assert [s.interface for s in general.services] == ["fw-web", ""]
    assert general.etag == etag_of(GENERAL.encode())
    assert general.errors == []
    assert response.context["service_count"] == 3
    html = response.content.decode()
    assert "2 node types, 3 services." in html
    for text in ("general-purpose", "report-worker", "fw-web", "2048 MiB"):
        assert text in html
    assert etag_of(COMPUTE.encode()).strip('"') in html
    # The YAML itself is shown, escaped.
    assert "image: /var/lib/images/web-rootfs.ext4" in html
    assert "&lt;b&gt;hello&lt;/b&gt;" in html
    assert "<b>hello</b>" not in html


def test_dashboard_ignores_keys_that_agents_never_fetch(
    client_alice: Client, local_store: LocalStore
) -> None:
    local_store.put("nodes/compute.yaml", COMPUTE.encode())
    local_store.put("nodes/README.txt", b"not a node config")
    local_store.put("nodes/old/general-purpose.yaml", GENERAL.encode())
    local_store.put("elsewhere/edge.yaml", GENERAL.encode())

    response = client_alice.get("/nodes/")

    assert [node.key for node in response.context["nodes"]] == ["nodes/compute.yaml"]


def test_empty_store_says_nothing_is_published(
    client_alice: Client, local_store: LocalStore
) -> None:
    response = client_alice.get("/nodes/")
    assert response.status_code == 200
    assert b"Nothing is published yet" in response.content


def test_invalid_node_config_shows_its_errors(
    client_alice: Client, local_store: LocalStore
) -> None:
    broken = GENERAL.replace("    kernel: /var/lib/kernels/vmlinux\n", "", 1)
    local_store.put("nodes/general-purpose.yaml", broken.encode())

    response = client_alice.get("/nodes/")

    assert response.status_code == 200
    (node,) = response.context["nodes"]
    assert node.services == []
    assert node.errors == ["nodes/general-purpose.yaml: service web: missing kernel"]
    assert b"Agents reject this config" in response.content
    assert b"service web: missing kernel" in response.content


def test_yaml_syntax_error_is_shown_with_its_line(
    client_alice: Client, local_store: LocalStore
) -> None:
    local_store.put("nodes/compute.yaml", b"node: compute\nservices: [\n")

    response = client_alice.get("/nodes/")

    assert response.status_code == 200
    (node,) = response.context["nodes"]
    assert len(node.errors) == 1
    assert node.errors[0].startswith("nodes/compute.yaml: invalid YAML (line 3, ")


def test_unknown_fields_are_shown_as_warnings(
    client_alice: Client, local_store: LocalStore
) -> None:
    local_store.put("nodes/compute.yaml", (COMPUTE + "colour: blue\n").encode())

    response = client_alice.get("/nodes/")

    (node,) = response.context["nodes"]
    assert node.errors == []
    assert node.warnings == ["nodes/compute.yaml: unknown field colour ignored"]
    assert b"unknown field colour ignored" in response.content


def test_misconfigured_store_is_reported_on_the_page(
    client_alice: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIREWORK_STORE", "ftp")

    response = client_alice.get("/nodes/")

    assert response.status_code == 200
    assert response.context["store_error"].startswith("FIREWORK_STORE:")
    assert b"Could not read the object store." in response.content


def test_unreachable_store_is_reported_on_the_page(
    client_alice: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "do-not-show-this-secret"
    monkeypatch.setenv("FIREWORK_STORE", "s3")
    monkeypatch.setenv("S3_BUCKET", "firework")
    monkeypatch.setenv("S3_REGION", "us-east-1")
    monkeypatch.setenv("S3_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "firework")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)

    response = client_alice.get("/nodes/")

    assert response.status_code == 200
    assert response.context["nodes"] == []
    assert "list s3://firework/nodes/" in response.context["store_error"]
    assert b"Could not read the object store." in response.content
    assert secret.encode() not in response.content


def test_dashboard_reads_configs_published_on_s3(
    client_alice: Client, monkeypatch: pytest.MonkeyPatch, s3_bucket: S3Bucket
) -> None:
    store = s3_bucket.store(prefix="fleet")
    etag = store.put("nodes/compute.yaml", COMPUTE.encode())
    server = s3_bucket.server
    monkeypatch.setenv("FIREWORK_STORE", "s3")
    monkeypatch.setenv("S3_BUCKET", s3_bucket.name)
    monkeypatch.setenv("S3_PREFIX", "fleet")
    monkeypatch.setenv("S3_REGION", server.region)
    monkeypatch.setenv("S3_ENDPOINT_URL", server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)

    response = client_alice.get("/nodes/")

    (node,) = response.context["nodes"]
    assert (node.node_type, node.etag) == ("compute", etag)
    assert [s.name for s in node.services] == ["report-worker"]
    assert f"s3://{s3_bucket.name}/fleet/".encode() in response.content


def test_rejected_s3_credentials_are_reported_without_the_secret(
    client_alice: Client, monkeypatch: pytest.MonkeyPatch, s3_bucket: S3Bucket
) -> None:
    wrong = "wrong-secret-value"
    server = s3_bucket.server
    monkeypatch.setenv("FIREWORK_STORE", "s3")
    monkeypatch.setenv("S3_BUCKET", s3_bucket.name)
    monkeypatch.setenv("S3_REGION", server.region)
    monkeypatch.setenv("S3_ENDPOINT_URL", server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)

    response = client_alice.get("/nodes/")

    assert response.status_code == 200
    assert "access denied" in response.context["store_error"]
    assert wrong.encode() not in response.content


def test_services_show_tap_health_check_links_and_port_forwards(
    client_alice: Client, local_store: LocalStore
) -> None:
    local_store.put("nodes/general-purpose.yaml", WIRED.encode())

    response = client_alice.get("/nodes/")

    (node,) = response.context["nodes"]
    web, api = node.services
    assert (web.interface, web.guest_ip) == ("fw-web", "172.16.0.2")
    assert web.health_check == "http :80/healthz every 10s, timeout 5s, 3 retries"
    assert web.links == ["API_URL → http://api:9000"]
    assert web.port_forwards == ["8080 → 80"]
    assert (api.interface, api.guest_ip) == ("fw-api", "")
    assert api.health_check == "tcp :9000 every 10s, timeout 5s, 3 retries"
    html = response.content.decode()
    for text in (
        "<code>fw-api</code>",
        "<code>API_URL → http://api:9000</code>",
        "<code>8080 → 80</code>",
        "http :80/healthz every 10s, timeout 5s, 3 retries",
    ):
        assert text in html, text


def test_each_node_config_names_the_run_that_published_it(
    client_alice: Client, local_store: LocalStore
) -> None:
    ops = make_repository("ops-config")
    # The same content published twice: the later run is the one in the store.
    make_revision(ops, Revision.Status.SUCCEEDED, outputs={"compute": COMPUTE})
    latest = make_revision(
        ops, Revision.Status.SUCCEEDED, sha=SHA_B, outputs={"compute": COMPUTE}
    )
    # A failed run never published, even if it recorded the same content.
    make_revision(ops, Revision.Status.FAILED, outputs={"compute": COMPUTE})
    local_store.put("nodes/compute.yaml", COMPUTE.encode())
    local_store.put("nodes/general-purpose.yaml", GENERAL.encode())

    response = client_alice.get("/nodes/")

    nodes = {node.node_type: node for node in response.context["nodes"]}
    assert nodes["compute"].published_by == latest
    assert nodes["general-purpose"].published_by is None
    html = response.content.decode()
    assert (
        f'<a href="/revisions/{latest.pk}/">run #{latest.pk}</a> of ops-config' in html
    )
    assert f"<code>{SHA_B[:12]}</code>" in html
    assert "no recorded run (written by hand or by the enrich command)" in html


def test_a_hand_edited_config_is_not_attributed_to_a_run(
    client_alice: Client, local_store: LocalStore
) -> None:
    ops = make_repository("ops-config")
    make_revision(ops, Revision.Status.SUCCEEDED, outputs={"compute": COMPUTE})
    local_store.put("nodes/compute.yaml", (COMPUTE + "# edited\n").encode())

    response = client_alice.get("/nodes/")

    (node,) = response.context["nodes"]
    assert node.published_by is None
