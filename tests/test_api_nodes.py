"""``/api/v1/node-configs/``: node configs as published in a real object store."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from controlplane.models import NodeConfigOutput, Revision
from controlplane.objectstore import LocalStore, etag_of
from tests.apisupport import (
    Endpoint,
    Personas,
    make_repository,
    session_client,
    token_client,
)
from tests.conftest import S3Bucket
from tests.dashboard_data import COMPUTE as COMPUTE_OF_A_RUN
from tests.dashboard_data import GENERAL_PAIR, sha256

LIST = "/api/v1/node-configs/"
GENERAL = GENERAL_PAIR
COMPUTE = COMPUTE_OF_A_RUN.replace("node: compute\n", "node: compute.gpu\n")


@pytest.fixture
def bob(people: Personas) -> APIClient:
    return token_client(people.bob_token)


@pytest.fixture
def local_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalStore:
    """The store the API reads, configured through the environment."""
    root = tmp_path / "store"
    monkeypatch.setenv("FIREWORK_STORE", "local")
    monkeypatch.setenv("FIREWORK_STORE_DIR", str(root))
    store = LocalStore(root)
    store.put("nodes/general-purpose.yaml", GENERAL.encode())
    return store


def publishing_revision(node_type: str, text: str, *, published: bool) -> Revision:
    repo = make_repository(f"repo-{Revision.objects.count()}")
    revision = Revision.objects.create(
        repository=repo,
        ref="main",
        trigger="api",
        status="succeeded" if published else "failed",
        published=published,
    )
    NodeConfigOutput.objects.create(
        revision=revision,
        node_type=node_type,
        content=text,
        sha256=sha256(text),
        object_key=f"nodes/{node_type}.yaml",
    )
    return revision


ENDPOINTS = [
    Endpoint("list", "get", lambda o: LIST, 200),
    Endpoint("detail", "get", lambda o: f"{LIST}general-purpose/", 200),
]
by_name = pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.name)


# --- the auth matrix (read-only endpoints) ---------------------------------


@by_name
def test_anonymous_charlie_gets_401(endpoint: Endpoint, local_store: LocalStore):
    response = endpoint.call(APIClient(), {})

    assert response.status_code == 401
    assert b"web-rootfs" not in response.content


@by_name
@pytest.mark.parametrize("who", ["alice-token", "bob-token", "bob-session"])
def test_any_logged_in_user_may_read(
    endpoint: Endpoint, people: Personas, local_store: LocalStore, who: str
):
    client = {
        "alice-token": lambda: token_client(people.alice_token),
        "bob-token": lambda: token_client(people.bob_token),
        "bob-session": lambda: session_client(people.bob, with_csrf=False),
    }[who]()

    response = endpoint.call(client, {})

    assert response.status_code == 200
    assert b"general-purpose" in response.content


@by_name
def test_deleted_or_deactivated_tokens_get_401(
    endpoint: Endpoint, people: Personas, local_store: LocalStore
):
    alice = token_client(people.alice_token)
    bob = token_client(people.bob_token)
    Token.objects.filter(user=people.alice).delete()
    User.objects.filter(pk=people.bob.pk).update(is_active=False)

    assert endpoint.call(alice, {}).status_code == 401
    assert endpoint.call(bob, {}).status_code == 401


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_node_configs_cannot_be_written_through_the_api(
    people: Personas, local_store: LocalStore, method: str
):
    alice = token_client(people.alice_token)

    listed = getattr(alice, method)(LIST)
    single = getattr(alice, method)(f"{LIST}general-purpose/")

    assert (listed.status_code, single.status_code) == (405, 405)
    assert local_store.get("nodes/general-purpose.yaml").data == GENERAL.encode()


# --- list -------------------------------------------------------------------


def test_list_shows_every_node_config_with_the_revision_that_made_it(
    bob: APIClient, local_store: LocalStore
):
    local_store.put("nodes/compute.gpu.yaml", COMPUTE.encode())
    old = publishing_revision("general-purpose", GENERAL, published=True)
    newest = publishing_revision("general-purpose", GENERAL, published=True)
    publishing_revision("general-purpose", GENERAL, published=False)  # not it
    publishing_revision("compute.gpu", COMPUTE + "# other\n", published=True)

    body = bob.get(LIST).json()

    assert [c["node_type"] for c in body] == ["compute.gpu", "general-purpose"]
    compute, general = body
    assert general == {
        "node_type": "general-purpose",
        "key": "nodes/general-purpose.yaml",
        "etag": etag_of(GENERAL.encode()),
        "sha256": sha256(GENERAL),
        "size_bytes": len(GENERAL.encode()),
        "services": [
            {
                "name": "web",
                "image": "/var/lib/images/web-rootfs.ext4",
                "vcpus": 2,
                "memory_mb": 512,
                "interface": "fw-web",
                "guest_ip": "172.16.0.2",
            },
            {
                "name": "api",
                "image": "/var/lib/images/api-rootfs.ext4",
                "vcpus": 1,
                "memory_mb": 384,
                "interface": "",
                "guest_ip": "",
            },
        ],
        "errors": [],
        "warnings": [],
        "revision": newest.pk,
        "repository": newest.repository.name,
    }
    assert newest.pk > old.pk
    assert "content" not in general
    assert (compute["revision"], compute["repository"]) == (None, None)


def test_list_skips_keys_agents_never_fetch(bob: APIClient, local_store: LocalStore):
    local_store.put("nodes/README.txt", b"not a node config")
    local_store.put("nodes/old/compute.yaml", COMPUTE.encode())
    local_store.put("elsewhere/edge.yaml", COMPUTE.encode())

    body = bob.get(LIST).json()

    assert [c["key"] for c in body] == ["nodes/general-purpose.yaml"]


def test_empty_store_lists_nothing(
    bob: APIClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("FIREWORK_STORE", "local")
    monkeypatch.setenv("FIREWORK_STORE_DIR", str(tmp_path / "missing"))

    response = bob.get(LIST)

    assert (response.status_code, response.json()) == (200, [])


def test_broken_config_is_listed_with_the_errors_an_agent_would_see(
    bob: APIClient, local_store: LocalStore
):
    local_store.put("nodes/compute.yaml", b"node: compute\nservices: [\n")
    local_store.put(
        "nodes/general-purpose.yaml",
        GENERAL.replace("    kernel: /var/lib/kernels/vmlinux\n", "", 1).encode(),
    )

    compute, general = bob.get(LIST).json()

    assert compute["errors"][0].startswith("nodes/compute.yaml: invalid YAML")
    assert general["errors"] == [
        "nodes/general-purpose.yaml: service web: missing kernel"
    ]
    assert general["services"] == []


# --- detail -----------------------------------------------------------------


def test_detail_has_the_yaml_text_and_the_etag(bob: APIClient, local_store: LocalStore):
    revision = publishing_revision("general-purpose", GENERAL, published=True)

    response = bob.get(f"{LIST}general-purpose/")

    assert response.status_code == 200
    body = response.json()
    assert body["content"] == GENERAL
    assert [s["name"] for s in body["services"]] == ["web", "api"]
    assert body["revision"] == revision.pk
    assert response["ETag"] == etag_of(GENERAL.encode())


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("general-purpose/?format=yaml", {}),
        ("general-purpose/", {"Accept": "application/yaml"}),
        ("general-purpose.yaml", {}),
    ],
    ids=["query", "accept", "suffix"],
)
def test_raw_yaml_on_request(
    bob: APIClient, local_store: LocalStore, path: str, headers: dict[str, str]
):
    response = bob.get(f"{LIST}{path}", headers=headers)

    assert response.status_code == 200
    assert response["Content-Type"] == "application/yaml; charset=utf-8"
    assert response.content == GENERAL.encode()


def test_missing_node_type_is_a_json_404_even_when_yaml_was_asked_for(
    bob: APIClient, local_store: LocalStore
):
    plain = bob.get(f"{LIST}compute/")
    as_yaml = bob.get(f"{LIST}compute/?format=yaml")

    for response in (plain, as_yaml):
        assert response.status_code == 404
        assert response["Content-Type"] == "application/json"
        assert response.json() == {"detail": "no node config published for compute"}


@pytest.mark.parametrize(
    "node_type",
    [
        "..",
        "..%2Fsecret",
        "%2e%2e%2fsecret",
        "a%2F..%2F..%2Fsecret",
        "UPPER",
        "under_score",
        "-dash",
        "a..b",
        "x" * 64,
        "%00",
        "caf%C3%A9",
    ],
)
def test_node_type_in_the_url_cannot_reach_other_keys(
    bob: APIClient, local_store: LocalStore, node_type: str
):
    local_store.put("secret.yaml", b"node: secret\n")

    response = bob.get(f"{LIST}{node_type}/")

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert b"node: " not in response.content


# --- store failures ---------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def unreachable_s3(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIREWORK_STORE", "s3")
    monkeypatch.setenv("S3_BUCKET", "nodes")
    monkeypatch.setenv("S3_REGION", "us-east-1")
    monkeypatch.setenv("S3_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3-secret-never-shown")


@pytest.mark.parametrize(
    "path", ["", "general-purpose/", "general-purpose/?format=yaml"]
)
def test_unreachable_store_is_a_json_503(
    bob: APIClient, unreachable_s3: None, path: str
):
    response = bob.get(f"{LIST}{path}")

    assert response.status_code == 503
    assert response["Content-Type"] == "application/json"
    assert response.json()["detail"].startswith("object store unavailable: ")
    assert b"s3-secret-never-shown" not in response.content


def test_misconfigured_store_is_a_json_503(
    bob: APIClient, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("FIREWORK_STORE", "ftp")

    response = bob.get(LIST)

    assert response.status_code == 503
    assert response.json()["detail"] == (
        "object store not configured: FIREWORK_STORE: must be local or s3 (got 'ftp')"
    )


# --- a real S3 server ---------------------------------------------------------


def _use_s3(monkeypatch: pytest.MonkeyPatch, bucket: S3Bucket, secret: str) -> None:
    server = bucket.server
    monkeypatch.setenv("FIREWORK_STORE", "s3")
    monkeypatch.setenv("S3_BUCKET", bucket.name)
    monkeypatch.setenv("S3_PREFIX", "prod")
    monkeypatch.setenv("S3_REGION", server.region)
    monkeypatch.setenv("S3_ENDPOINT_URL", server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)


def test_configs_on_s3_are_listed_and_shown_with_their_etags(
    bob: APIClient, s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch
):
    store = s3_bucket.store(prefix="prod")
    etag = store.put("nodes/compute.gpu.yaml", COMPUTE.encode())
    _use_s3(monkeypatch, s3_bucket, s3_bucket.server.secret_key)

    listed = bob.get(LIST).json()
    shown = bob.get(f"{LIST}compute.gpu/?format=yaml")

    assert [(c["key"], c["etag"]) for c in listed] == [("nodes/compute.gpu.yaml", etag)]
    assert listed[0]["services"][0]["name"] == "report-worker"
    assert shown.content == COMPUTE.encode()
    assert shown["ETag"] == etag


def test_wrong_s3_credentials_are_a_503_without_the_secret(
    bob: APIClient, s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch
):
    _use_s3(monkeypatch, s3_bucket, "wrong-secret-value")

    response = bob.get(LIST)

    assert response.status_code == 503
    assert "access denied" in response.json()["detail"]
    assert b"wrong-secret-value" not in response.content
