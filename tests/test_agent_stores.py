"""Config stores against real servers (SeaweedFS S3, dulwich over HTTP) and disk."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from dulwich.repo import Repo

from nodeagent.stores import (
    MAX_CONFIG_BYTES,
    ConfigInvalid,
    GitConfigStore,
    LocalDirStore,
    S3ConfigStore,
    StoreError,
    fetch_desired,
)
from tests.conftest import S3Bucket, free_ports
from tests.gitserver import GitHTTPServer, commit_tree

TOKEN = "s3cr3t-token-value"


def service(name: str, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": name,
        "image": f"/img/{name}.ext4",
        "kernel": "/img/vmlinux",
        "vcpus": 1,
        "memory_mb": 256,
        "kernel_args": "console=ttyS0",
    }
    return {**base, **fields}


def node_yaml(node: str, *services: dict[str, Any]) -> str:
    return yaml.safe_dump({"node": node, "services": list(services)})


# ---- S3 -------------------------------------------------------------------


def s3_store(bucket: S3Bucket, prefix: str = "") -> S3ConfigStore:
    server = bucket.server
    return S3ConfigStore(
        bucket.name,
        prefix=prefix,
        region=server.region,
        endpoint_url=server.endpoint_url,
        access_key=server.access_key,
        secret_key=server.secret_key,
    )


def record_statuses(store: S3ConfigStore) -> list[int]:
    """HTTP status of every GetObject the store sends (observed, not mocked)."""
    statuses: list[int] = []

    def after_call(http_response: Any, **_: Any) -> None:
        statuses.append(http_response.status_code)

    store.client.meta.events.register("after-call.s3.GetObject", after_call)
    return statuses


def put(bucket: S3Bucket, key: str, text: str) -> str:
    response = bucket.server.admin.put_object(
        Bucket=bucket.name, Key=key, Body=text.encode()
    )
    return str(response["ETag"]).strip('"')


def test_s3_unchanged_config_costs_a_304_and_a_change_is_downloaded(
    s3_bucket: S3Bucket,
) -> None:
    first = node_yaml("edge", service("web"))
    etag = put(s3_bucket, "fw/nodes/edge.yaml", first)
    store = s3_store(s3_bucket, prefix="fw/")
    statuses = record_statuses(store)

    fetched = store.fetch("edge")
    assert (fetched.changed, fetched.data, fetched.revision) == (
        True,
        first.encode(),
        etag,
    )
    again = store.fetch("edge")
    assert (again.changed, again.data, again.revision) == (False, None, etag)
    assert statuses == [200, 304]

    second = node_yaml("edge", service("web"), service("db"))
    new_etag = put(s3_bucket, "fw/nodes/edge.yaml", second)
    changed = store.fetch("edge")
    assert (changed.changed, changed.data, changed.revision) == (
        True,
        second.encode(),
        new_etag,
    )
    assert new_etag != etag
    assert store.fetch("edge").changed is False
    assert statuses == [200, 304, 200, 304]


def test_s3_missing_object_is_a_permanent_error_naming_the_key(
    s3_bucket: S3Bucket,
) -> None:
    with pytest.raises(StoreError) as caught:
        s3_store(s3_bucket, prefix="fw/").fetch("nowhere")
    assert (
        str(caught.value)
        == f"s3 store {s3_bucket.name}: fw/nodes/nowhere.yaml: not found"
    )
    assert caught.value.transient is False


def test_s3_wrong_secret_is_access_denied_without_the_secret(
    s3_bucket: S3Bucket,
) -> None:
    put(s3_bucket, "nodes/edge.yaml", node_yaml("edge"))
    server = s3_bucket.server
    store = S3ConfigStore(
        s3_bucket.name,
        region=server.region,
        endpoint_url=server.endpoint_url,
        access_key=server.access_key,
        secret_key="wrong-secret-value",
    )
    with pytest.raises(StoreError) as caught:
        store.fetch("edge")
    assert "access denied" in str(caught.value)
    assert "nodes/edge.yaml" in str(caught.value)
    assert "wrong-secret-value" not in str(caught.value)
    assert caught.value.transient is False


def test_s3_oversized_config_is_refused(s3_bucket: S3Bucket) -> None:
    put(s3_bucket, "nodes/big.yaml", "#" * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(StoreError, match="larger than"):
        s3_store(s3_bucket).fetch("big")


def test_s3_unreachable_endpoint_is_transient() -> None:
    (port,) = free_ports(1)  # nothing listens there: the connection is refused
    store = S3ConfigStore(
        "b", endpoint_url=f"http://127.0.0.1:{port}", access_key="k", secret_key="s"
    )
    with pytest.raises(StoreError) as caught:
        store.fetch("edge")
    assert str(caught.value).startswith("s3 store b: nodes/edge.yaml: ")
    assert caught.value.transient is True


# ---- Git ------------------------------------------------------------------


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    return tmp_path / "ops"


@pytest.fixture
def git_server(repo_dir: Path) -> Iterator[GitHTTPServer]:
    commit_tree(repo_dir, {"nodes/edge.yaml": node_yaml("edge", service("web"))}, "one")
    with GitHTTPServer({"ops.git": repo_dir}, token=TOKEN) as server:
        yield server


def git_store(server: GitHTTPServer, cache: Path, token: str = TOKEN) -> GitConfigStore:
    return GitConfigStore(f"{server.url}/ops.git", "main", token, cache)


def test_git_clone_then_unchanged_fetch_is_one_ref_advertisement(
    git_server: GitHTTPServer, repo_dir: Path, tmp_path: Path
) -> None:
    store = git_store(git_server, tmp_path / "cache")
    first = store.fetch("edge")
    assert first.changed is True
    assert first.data == node_yaml("edge", service("web")).encode()
    with Repo(str(repo_dir)) as repo:
        assert first.revision == repo.head().decode()

    before = git_server.requests
    again = store.fetch("edge")
    assert again.changed is False and again.data is None
    assert git_server.requests - before == 1  # GET info/refs, no upload-pack


def test_git_new_commit_is_fetched_incrementally(
    git_server: GitHTTPServer, repo_dir: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    assert git_store(git_server, cache).fetch("edge").changed
    text = node_yaml("edge", service("web"), service("db"))
    sha = commit_tree(repo_dir, {"nodes/edge.yaml": text}, "two")

    # a new store (as after an agent restart) reuses the clone on disk
    fetched = git_store(git_server, cache).fetch("edge")
    assert (fetched.changed, fetched.data, fetched.revision) == (
        True,
        text.encode(),
        sha,
    )


def test_git_revision_is_the_branch_head(
    git_server: GitHTTPServer, repo_dir: Path, tmp_path: Path
) -> None:
    sha = commit_tree(repo_dir, {"README": "hello"}, "docs only")
    fetched = git_store(git_server, tmp_path / "cache").fetch("edge")
    assert fetched.revision == sha


def test_git_wrong_token_is_denied_without_showing_it(
    git_server: GitHTTPServer, tmp_path: Path
) -> None:
    store = git_store(git_server, tmp_path / "cache", token="not-the-token-123")
    with pytest.raises(StoreError) as caught:
        store.fetch("edge")
    message = str(caught.value)
    assert message == (
        f"git store {git_server.url}/ops.git: fetching main: access denied (check the token)"
    )
    assert "not-the-token-123" not in message and TOKEN not in message
    assert caught.value.transient is False


def test_git_missing_file_names_the_path(
    git_server: GitHTTPServer, tmp_path: Path
) -> None:
    with pytest.raises(
        StoreError, match=r"nodes/other\.yaml at [0-9a-f]{12}: no such file"
    ):
        git_store(git_server, tmp_path / "cache").fetch("other")


def test_git_server_down_is_transient(
    git_server: GitHTTPServer, tmp_path: Path
) -> None:
    store = git_store(git_server, tmp_path / "cache")
    git_server.unavailable = True
    with pytest.raises(StoreError) as caught:
        store.fetch("edge")
    assert "503" in str(caught.value)
    assert caught.value.transient is True


def test_git_token_in_url_is_not_shown(
    git_server: GitHTTPServer, tmp_path: Path
) -> None:
    url = git_server.url.replace("http://", f"http://user:{TOKEN}@") + "/missing.git"
    store = GitConfigStore(url, "main", None, tmp_path / "cache")
    with pytest.raises(StoreError) as caught:
        store.fetch("edge")
    assert TOKEN not in str(caught.value)


# ---- local directory ----------------------------------------------------


def test_local_store_revision_is_content_hash(tmp_path: Path) -> None:
    path = tmp_path / "nodes" / "edge.yaml"
    path.parent.mkdir()
    path.write_text(node_yaml("edge", service("web")))
    store = LocalDirStore(tmp_path)
    first = store.fetch("edge")
    assert first.changed and first.data == path.read_bytes()
    assert len(first.revision) == 64
    assert store.fetch("edge").changed is False

    path.write_text(node_yaml("edge", service("db")))
    second = store.fetch("edge")
    assert second.changed and second.revision != first.revision


def test_local_store_missing_file_and_bad_label(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"nodes/edge\.yaml: no such file"):
        LocalDirStore(tmp_path).fetch("edge")
    with pytest.raises(StoreError, match="not a valid node name"):
        LocalDirStore(tmp_path).fetch("../etc")


# ---- merging labels -------------------------------------------------------


def write_nodes(root: Path, files: dict[str, str]) -> None:
    (root / "nodes").mkdir(parents=True, exist_ok=True)
    for label, text in files.items():
        (root / "nodes" / f"{label}.yaml").write_text(text)


def test_labels_merge_sorted_with_last_label_winning(tmp_path: Path) -> None:
    write_nodes(
        tmp_path,
        {
            "base": node_yaml("base", service("web"), service("cache")),
            "gpu": node_yaml("gpu", service("web", vcpus=4), service("api")),
        },
    )
    desired = fetch_desired(LocalDirStore(tmp_path), ["base", "gpu"])
    assert [s.name for s in desired.config.services] == ["api", "cache", "web"]
    web = desired.config.services[2]
    assert web.vcpus == 4
    assert desired.warnings == [
        "nodes/gpu.yaml: service web: also in nodes/base.yaml, the one in nodes/gpu.yaml is used"
    ]
    assert list(desired.revisions) == ["base", "gpu"]


def test_every_error_of_every_label_is_reported(tmp_path: Path) -> None:
    write_nodes(
        tmp_path,
        {
            "a": node_yaml("a", service("web", vcpus=99)),
            "b": "node: b\nservices: [\n",
            "c": node_yaml("c", service("db", kernel="vmlinux")),
        },
    )
    with pytest.raises(ConfigInvalid) as caught:
        fetch_desired(LocalDirStore(tmp_path), ["a", "b", "c"])
    errors = caught.value.errors
    assert len(errors) == 3
    assert (
        errors[0]
        == "nodes/a.yaml: service web: vcpus: must be between 1 and 32, got 99"
    )
    assert errors[1].startswith("nodes/b.yaml: invalid YAML (line ")
    assert errors[2].startswith(
        "nodes/c.yaml: service db: kernel: must be an absolute path"
    )


def test_conflicts_across_labels_are_errors(tmp_path: Path) -> None:
    forward = {"network": True, "port_forwards": [{"host_port": 80, "vm_port": 80}]}
    write_nodes(
        tmp_path,
        {
            "a": node_yaml("a", service("web", **forward)),
            "b": node_yaml("b", service("api", **forward)),
        },
    )
    with pytest.raises(ConfigInvalid) as caught:
        fetch_desired(LocalDirStore(tmp_path), ["a", "b"])
    assert caught.value.errors == [
        "nodes/a.yaml: service web: port_forwards.host_port: 80 is also used by service api"
    ]
