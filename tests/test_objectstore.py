"""The object stores: one contract for LocalStore and S3Store, then each one's own.

S3 tests run against a real SeaweedFS server on 127.0.0.1 (see conftest).
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from controlplane.objectstore import (
    TEMP_SUFFIX,
    AccessDenied,
    InvalidKey,
    LocalStore,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreError,
    S3Store,
    StoreConfigError,
    StoreUnavailable,
    store_from_env,
)
from tests.conftest import S3Bucket, S3Server

BAD_KEYS = [
    ("empty", ""),
    ("absolute", "/etc/passwd"),
    ("dotdot at start", "../outside.yaml"),
    ("dotdot inside", "nodes/../../outside.yaml"),
    ("dot segment", "nodes/./web.yaml"),
    ("backslash", "nodes\\web.yaml"),
    ("empty segment", "nodes//web.yaml"),
    ("trailing slash", "nodes/"),
    ("NUL byte", "nodes/web\0.yaml"),
    ("temp suffix", f"nodes/web{TEMP_SUFFIX}"),
]


def md5_etag(data: bytes) -> str:
    return '"' + hashlib.md5(data).hexdigest() + '"'


# The contract: every test here runs once per store kind.


@pytest.mark.parametrize(
    "data",
    [b"", b"node:\n  type: compute\n", os.urandom(300_000)],
    ids=["empty", "yaml", "300k-binary"],
)
def test_put_returns_quoted_md5_etag_and_get_returns_the_same(
    store: ObjectStore, data: bytes
) -> None:
    etag = store.put("nodes/compute.yaml", data)

    stored = store.get("nodes/compute.yaml")
    assert etag == md5_etag(data)
    assert stored.data == data
    assert stored.etag == etag


def test_put_replaces_the_whole_object(store: ObjectStore) -> None:
    store.put("nodes/web.yaml", b"a much longer first version\n")
    etag = store.put("nodes/web.yaml", b"v2\n")

    assert store.get("nodes/web.yaml").data == b"v2\n"
    assert store.get("nodes/web.yaml").etag == etag == md5_etag(b"v2\n")


def test_get_of_missing_key_raises_object_not_found_naming_the_key(
    store: ObjectStore,
) -> None:
    store.put("nodes/web.yaml", b"x")

    with pytest.raises(ObjectNotFound, match=r"get .*nodes/api\.yaml"):
        store.get("nodes/api.yaml")


def test_list_returns_sorted_keys_that_start_with_the_prefix(
    store: ObjectStore,
) -> None:
    for key in ["nodes/web.yaml", "nodes/api.yaml", "nodes/x/deep.yaml", "other"]:
        store.put(key, b"x")

    assert store.list("nodes/") == [
        "nodes/api.yaml",
        "nodes/web.yaml",
        "nodes/x/deep.yaml",
    ]
    assert store.list("nodes/we") == ["nodes/web.yaml"]
    assert store.list("nodes") == store.list("nodes/")
    assert store.list("") == [*store.list("nodes/"), "other"]
    assert store.list("missing/") == []


def test_list_returns_every_key_of_a_large_listing(store: ObjectStore) -> None:
    keys = [f"nodes/type-{i:03d}.yaml" for i in range(60)]
    for key in reversed(keys):
        store.put(key, key.encode())

    assert store.list("nodes/") == keys


def test_delete_removes_the_object_and_leaves_others(store: ObjectStore) -> None:
    store.put("nodes/web.yaml", b"web")
    store.put("nodes/api.yaml", b"api")

    store.delete("nodes/web.yaml")

    assert store.list("nodes/") == ["nodes/api.yaml"]
    with pytest.raises(ObjectNotFound):
        store.get("nodes/web.yaml")


def test_delete_of_missing_key_is_not_an_error(store: ObjectStore) -> None:
    store.delete("nodes/never-written.yaml")

    assert store.list("") == []


@pytest.mark.parametrize(("why", "key"), BAD_KEYS, ids=[b[0] for b in BAD_KEYS])
def test_invalid_keys_are_rejected_before_touching_the_store(
    store: ObjectStore, tmp_path: Path, why: str, key: str
) -> None:
    operations: list[Callable[[], object]] = [
        lambda: store.put(key, b"x"),
        lambda: store.get(key),
        lambda: store.delete(key),
    ]

    for operation in operations:
        with pytest.raises(InvalidKey, match="invalid key"):
            operation()
    assert store.list("") == []
    assert not (tmp_path / "outside.yaml").exists()


@pytest.mark.parametrize("prefix", ["/nodes/", "../", "nodes//", "a\\b"])
def test_invalid_list_prefixes_are_rejected(store: ObjectStore, prefix: str) -> None:
    with pytest.raises(InvalidKey):
        store.list(prefix)


def test_invalid_key_is_a_value_error_and_an_object_store_error() -> None:
    with pytest.raises(ValueError, match="must be relative"):
        LocalStore(Path("unused")).put("/abs", b"")
    assert issubclass(InvalidKey, ObjectStoreError)


# LocalStore


def _all_files(root: Path) -> list[str]:
    return sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()
    )


def test_local_store_keeps_files_under_its_root_and_no_temp_files(
    tmp_path: Path,
) -> None:
    store = LocalStore(tmp_path / "store")

    for version in range(3):
        store.put("nodes/web.yaml", f"v{version}".encode())
    store.put("nodes/api.yaml", b"api")

    assert _all_files(tmp_path) == ["store/nodes/api.yaml", "store/nodes/web.yaml"]
    assert (tmp_path / "store/nodes/web.yaml").read_bytes() == b"v2"


def test_local_store_readers_never_see_a_half_written_object(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    versions = {b"a" * 2_000_000, b"b" * 1_000_000}
    store.put("nodes/web.yaml", b"a" * 2_000_000)
    seen: set[bytes] = set()
    done = threading.Event()

    def read_until_done() -> None:
        while not done.is_set():
            seen.add(store.get("nodes/web.yaml").data)

    reader = threading.Thread(target=read_until_done)
    reader.start()
    try:
        for _ in range(30):
            for data in sorted(versions):
                store.put("nodes/web.yaml", data)
    finally:
        done.set()
        reader.join()

    assert seen <= versions, "a reader saw a partial file"


def test_local_store_failed_put_leaves_no_temp_file(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    # A directory where the file should go makes the final rename fail for real.
    store.put("nodes/web.yaml/inside", b"x")

    with pytest.raises(ObjectStoreError, match=r"put nodes/web\.yaml in "):
        store.put("nodes/web.yaml", b"new")

    assert _all_files(tmp_path) == ["nodes/web.yaml/inside"]


def test_local_store_list_skips_temp_files_left_by_a_crash(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("nodes/web.yaml", b"x")
    (tmp_path / "nodes" / f".web.yaml.abc123{TEMP_SUFFIX}").write_bytes(b"partial")

    assert store.list("nodes/") == ["nodes/web.yaml"]


def test_local_store_get_of_a_directory_is_not_found(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("nodes/web.yaml", b"x")

    with pytest.raises(ObjectNotFound):
        store.get("nodes")


def test_local_store_on_a_missing_directory_is_empty(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "not-created-yet")

    assert store.list("") == []
    with pytest.raises(ObjectNotFound):
        store.get("nodes/web.yaml")


# S3Store


def test_s3_server_enforces_sigv4_and_wrong_secret_fails(s3_bucket: S3Bucket) -> None:
    bad = s3_bucket.store(secret_key="wrong-secret", max_attempts=1)
    s3_bucket.store().put("nodes/web.yaml", b"good")

    with pytest.raises(AccessDenied, match=r"put s3://.*/nodes/api\.yaml") as put:
        bad.put("nodes/api.yaml", b"evil")
    with pytest.raises(AccessDenied, match="SignatureDoesNotMatch") as get:
        bad.get("nodes/web.yaml")

    assert s3_bucket.raw_keys() == ["nodes/web.yaml"]
    for error in (put.value, get.value):
        assert "wrong-secret" not in str(error)


def test_s3_list_follows_every_page(s3_bucket: S3Bucket) -> None:
    store = s3_bucket.store(page_size=2)
    requests: list[str] = []
    store._client.meta.events.register(
        "after-call.s3.ListObjectsV2", lambda **_: requests.append("list")
    )
    keys = [f"nodes/n{i}.yaml" for i in range(7)]
    for key in keys:
        store.put(key, b"x")

    assert store.list("nodes/") == keys
    assert len(requests) == 4


def test_s3_prefix_is_normalised_and_isolates_stores(s3_bucket: S3Bucket) -> None:
    team_a = s3_bucket.store(prefix="team-a")
    team_b = s3_bucket.store(prefix="team-b/")
    team_a.put("nodes/web.yaml", b"a")
    team_b.put("nodes/web.yaml", b"b")

    assert team_a.prefix == "team-a/"
    assert team_a.describe().startswith(f"s3://{s3_bucket.name}/team-a/")
    assert s3_bucket.raw_keys() == ["team-a/nodes/web.yaml", "team-b/nodes/web.yaml"]
    assert team_a.list("") == ["nodes/web.yaml"]
    assert team_a.get("nodes/web.yaml").data == b"a"
    team_a.delete("nodes/web.yaml")
    assert s3_bucket.raw_keys() == ["team-b/nodes/web.yaml"]


@pytest.mark.parametrize("prefix", ["/abs/", "a//b/", "../up/", "a\\b"])
def test_s3_invalid_prefix_is_rejected(s3_bucket: S3Bucket, prefix: str) -> None:
    with pytest.raises(InvalidKey):
        s3_bucket.store(prefix=prefix)


def test_s3_put_stores_the_content_type(s3_bucket: S3Bucket) -> None:
    store = s3_bucket.store()
    store.put("nodes/web.yaml", b"x")
    store.put("blob.json", b"{}", content_type="application/json")

    client = s3_bucket.server.admin
    head = client.head_object(Bucket=s3_bucket.name, Key="nodes/web.yaml")
    assert head["ContentType"] == "application/yaml"
    head = client.head_object(Bucket=s3_bucket.name, Key="blob.json")
    assert head["ContentType"] == "application/json"


def test_s3_missing_bucket_error_names_operation_and_key(s3_server: S3Server) -> None:
    store = S3Store(
        "no-such-bucket-here",
        endpoint_url=s3_server.endpoint_url,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        max_attempts=1,
    )

    with pytest.raises(ObjectStoreError, match="NoSuchBucket") as excinfo:
        store.put("nodes/web.yaml", b"x")
    assert "put s3://no-such-bucket-here/nodes/web.yaml" in str(excinfo.value)


def test_s3_unreachable_endpoint_raises_store_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = S3Store(
        "bucket",
        endpoint_url=f"http://127.0.0.1:{port}",
        access_key="k",
        secret_key="s",
        max_attempts=1,
    )

    with pytest.raises(StoreUnavailable, match=r"get s3://bucket/nodes/web\.yaml"):
        store.get("nodes/web.yaml")
    with pytest.raises(StoreUnavailable, match=r"list s3://bucket/nodes/"):
        store.list("nodes/")


def test_s3_describe_hides_credentials_even_in_the_endpoint() -> None:
    store = S3Store(
        "bucket",
        prefix="fw",
        endpoint_url="http://user:endpoint-secret@127.0.0.1:9000",
        access_key="AKIDEXAMPLE",
        secret_key="super-secret",
    )

    assert store.describe() == "s3://bucket/fw/ at http://127.0.0.1:9000"
    assert "secret" not in repr(store)
    assert "AKIDEXAMPLE" not in repr(store)


@pytest.mark.parametrize(
    ("access_key", "secret_key"), [("k", None), (None, "s")], ids=["access", "secret"]
)
def test_s3_store_needs_both_keys_or_neither(
    access_key: str | None, secret_key: str | None
) -> None:
    with pytest.raises(StoreConfigError, match="both access key and secret key"):
        S3Store("bucket", access_key=access_key, secret_key=secret_key)


# store_from_env


def test_store_from_env_defaults_to_local_var_objectstore() -> None:
    store = store_from_env({})

    assert isinstance(store, LocalStore)
    assert store.root == Path("var/objectstore")


def test_store_from_env_local_uses_firework_store_dir(tmp_path: Path) -> None:
    env = {"FIREWORK_STORE": "local", "FIREWORK_STORE_DIR": str(tmp_path)}

    store = store_from_env(env)
    store.put("nodes/web.yaml", b"x")

    assert (tmp_path / "nodes" / "web.yaml").read_bytes() == b"x"


def test_store_from_env_rejects_an_unknown_kind() -> None:
    with pytest.raises(StoreConfigError, match=r"FIREWORK_STORE: .*'gcs'"):
        store_from_env({"FIREWORK_STORE": "gcs"})


def test_store_from_env_s3_requires_a_bucket() -> None:
    with pytest.raises(StoreConfigError, match="S3_BUCKET: required"):
        store_from_env({"FIREWORK_STORE": "s3"})


def s3_env(bucket: S3Bucket, **extra: str) -> dict[str, str]:
    return {
        "FIREWORK_STORE": "s3",
        "S3_BUCKET": bucket.name,
        "S3_ENDPOINT_URL": bucket.server.endpoint_url,
        "S3_REGION": bucket.server.region,
        **extra,
    }


def test_store_from_env_s3_with_prefix_and_keys_talks_to_the_server(
    s3_bucket: S3Bucket,
) -> None:
    env = s3_env(
        s3_bucket,
        S3_PREFIX="fw/",
        AWS_ACCESS_KEY_ID=s3_bucket.server.access_key,
        AWS_SECRET_ACCESS_KEY=s3_bucket.server.secret_key,
    )

    store = store_from_env(env)
    store.put("nodes/web.yaml", b"x")

    assert isinstance(store, S3Store)
    assert s3_bucket.raw_keys() == ["fw/nodes/web.yaml"]


def test_store_from_env_reads_keys_from_files_without_the_newline(
    s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    (tmp_path / "id").write_text(s3_bucket.server.access_key + "\n")
    (tmp_path / "secret").write_text(s3_bucket.server.secret_key + "\n")
    env = s3_env(
        s3_bucket,
        AWS_ACCESS_KEY_ID_FILE=str(tmp_path / "id"),
        AWS_SECRET_ACCESS_KEY_FILE=str(tmp_path / "secret"),
    )

    # A kept newline would change the SigV4 signature and the put would fail.
    store_from_env(env).put("nodes/web.yaml", b"x")

    assert s3_bucket.raw_keys() == ["nodes/web.yaml"]


def test_store_from_env_without_keys_uses_the_boto3_default_chain(
    s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_bucket.server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_bucket.server.secret_key)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))

    store_from_env(s3_env(s3_bucket)).put("nodes/web.yaml", b"x")

    assert s3_bucket.raw_keys() == ["nodes/web.yaml"]


def test_store_from_env_refuses_a_secret_given_twice(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("from-file\n")
    env = {
        "FIREWORK_STORE": "s3",
        "S3_BUCKET": "bucket",
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "from-env-value",
        "AWS_SECRET_ACCESS_KEY_FILE": str(tmp_path / "secret"),
    }

    with pytest.raises(StoreConfigError, match="both set") as excinfo:
        store_from_env(env)
    assert "from-env-value" not in str(excinfo.value)
    assert "from-file" not in str(excinfo.value)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AWS_ACCESS_KEY_ID": "k"}, "set both or neither"),
        ({"AWS_SECRET_ACCESS_KEY": "s"}, "set both or neither"),
        ({"AWS_SECRET_ACCESS_KEY_FILE": "/nonexistent/secret"}, "cannot read"),
    ],
    ids=["only-access-key", "only-secret", "unreadable-file"],
)
def test_store_from_env_rejects_incomplete_credentials(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(StoreConfigError, match=message):
        store_from_env({"FIREWORK_STORE": "s3", "S3_BUCKET": "bucket", **env})


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"\n", "is empty"), (b"s3cr\xe9t\xff\n", "is not valid UTF-8")],
    ids=["empty", "not-utf8"],
)
def test_store_from_env_rejects_an_unusable_secret_file_without_quoting_it(
    tmp_path: Path, content: bytes, message: str
) -> None:
    (tmp_path / "secret").write_bytes(content)
    env = {
        "FIREWORK_STORE": "s3",
        "S3_BUCKET": "bucket",
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY_FILE": str(tmp_path / "secret"),
    }

    with pytest.raises(StoreConfigError, match=message) as excinfo:
        store_from_env(env)
    assert str(excinfo.value).startswith("AWS_SECRET_ACCESS_KEY_FILE: ")
    assert "s3cr" not in str(excinfo.value)
    assert "xff" not in str(excinfo.value)
