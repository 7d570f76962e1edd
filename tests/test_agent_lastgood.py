"""The last good config: kept on disk, used when the store fails, reported stale."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nodeagent.lastgood import ConfigSource, LastGood, NoConfig
from nodeagent.stores import (
    GitConfigStore,
    LocalDirStore,
    S3ConfigStore,
    fetch_desired,
)
from tests.conftest import S3Bucket, free_ports
from tests.gitserver import GitHTTPServer, commit_tree
from tests.test_agent_stores import node_yaml, record_statuses, s3_store, service

TOKEN = "lastgood-token"
GOOD = node_yaml("edge", service("web"))
BETTER = node_yaml("edge", service("web"), service("db"))
INVALID = node_yaml("edge", service("web", vcpus=99))


class Clock:
    """A clock the test moves by hand: ``stale_since`` must be the first failure."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def tick(self) -> None:
        self.now += timedelta(seconds=30)


def write(root: Path, label: str, text: str) -> None:
    (root / "nodes").mkdir(parents=True, exist_ok=True)
    (root / "nodes" / f"{label}.yaml").write_text(text)


def names(source: ConfigSource) -> list[str]:
    return [s.name for s in source.current().desired.config.services]


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    write(tmp_path / "store", "edge", GOOD)
    return tmp_path / "store"


def test_last_good_round_trips_and_leaves_no_temp_file(
    store_dir: Path, tmp_path: Path
) -> None:
    write(store_dir, "gpu", node_yaml("gpu", service("api")))
    desired = fetch_desired(LocalDirStore(store_dir), ["edge", "gpu"])
    cache = LastGood(tmp_path / "state")
    cache.save(desired)

    assert [p.name for p in cache.dir.iterdir()] == ["config.json"]
    loaded = cache.load(["edge", "gpu"])
    assert loaded is not None
    assert loaded.config == desired.config
    assert loaded.revisions == desired.revisions
    assert loaded.raw == desired.raw
    assert cache.load(["gpu", "edge"]) is None  # saved for other labels


def test_unreadable_or_no_longer_valid_cache_is_not_used(tmp_path: Path) -> None:
    cache = LastGood(tmp_path)
    assert cache.load() is None
    cache.dir.mkdir()
    cache.path.write_text("{not json")
    assert cache.load() is None
    document = {"labels": [{"label": "edge", "revision": "r", "data": INVALID}]}
    cache.path.write_text(json.dumps(document))
    assert cache.load() is None


def test_fresh_config_is_cached_and_not_stale(store_dir: Path, tmp_path: Path) -> None:
    source = ConfigSource(LocalDirStore(store_dir), ["edge"], LastGood(tmp_path / "st"))
    snapshot = source.current()
    assert (snapshot.stale, snapshot.stale_reason, snapshot.stale_since) == (
        False,
        "",
        None,
    )
    cached = LastGood(tmp_path / "st").load(["edge"])
    assert cached is not None and cached.raw == {"edge": GOOD.encode()}


def test_invalid_config_keeps_last_good_until_fixed(
    store_dir: Path, tmp_path: Path
) -> None:
    clock = Clock()
    cache = LastGood(tmp_path / "st")
    source = ConfigSource(LocalDirStore(store_dir), ["edge"], cache, clock=clock)
    assert names(source) == ["web"]

    write(store_dir, "edge", INVALID)
    failed_at = clock.now
    snapshot = source.current()
    assert snapshot.stale is True
    assert [s.name for s in snapshot.desired.config.services] == ["web"]
    assert snapshot.stale_reason == (
        "config_invalid: nodes/edge.yaml: service web: vcpus: must be between 1 and 32, got 99"
    )
    assert snapshot.stale_since == failed_at

    clock.tick()
    again = source.current()  # unchanged invalid file: still stale, same since
    assert (again.stale, again.stale_since) == (True, failed_at)
    loaded = cache.load(["edge"])
    assert loaded is not None and loaded.raw == {"edge": GOOD.encode()}

    write(store_dir, "edge", BETTER)
    fixed = source.current()
    assert (fixed.stale, fixed.stale_reason, fixed.stale_since) == (False, "", None)
    assert [s.name for s in fixed.desired.config.services] == ["db", "web"]
    loaded = cache.load(["edge"])
    assert loaded is not None and loaded.raw == {"edge": BETTER.encode()}


def test_a_label_fetched_before_another_fails_is_not_lost(
    store_dir: Path, tmp_path: Path
) -> None:
    write(store_dir, "gpu", node_yaml("gpu", service("api")))
    store = LocalDirStore(store_dir)
    source = ConfigSource(store, ["edge", "gpu"], LastGood(tmp_path / "st"))
    assert names(source) == ["api", "web"]

    write(store_dir, "edge", BETTER)  # read on the next call, then gpu fails
    (store_dir / "nodes" / "gpu.yaml").rename(store_dir / "gpu.yaml")
    down = source.current()
    assert down.stale_reason.endswith("nodes/gpu.yaml: no such file")
    assert [s.name for s in down.desired.config.services] == ["api", "web"]

    (store_dir / "gpu.yaml").rename(store_dir / "nodes" / "gpu.yaml")
    assert names(source) == ["api", "db", "web"]  # edge unchanged now: from memory


def test_no_config_and_no_cache_raises(tmp_path: Path) -> None:
    source = ConfigSource(LocalDirStore(tmp_path), ["edge"], LastGood(tmp_path / "st"))
    with pytest.raises(
        NoConfig, match=r"config_fetch_failed: .*nodes/edge\.yaml: no such file"
    ):
        source.current()


# ---- Git store down ------------------------------------------------------


@pytest.fixture
def git_server(tmp_path: Path) -> Iterator[GitHTTPServer]:
    repo = tmp_path / "ops"
    commit_tree(repo, {"nodes/edge.yaml": GOOD}, "one")
    with GitHTTPServer({"ops.git": repo}, token=TOKEN) as server:
        yield server


def test_git_store_down_keeps_last_good_then_recovers(
    git_server: GitHTTPServer, tmp_path: Path
) -> None:
    clock = Clock()
    store = GitConfigStore(f"{git_server.url}/ops.git", "main", TOKEN, tmp_path / "c")
    source = ConfigSource(store, ["edge"], LastGood(tmp_path / "st"), clock=clock)
    assert source.current().stale is False

    git_server.unavailable = True
    down = source.current()
    assert down.stale is True
    assert down.stale_reason.startswith(
        f"config_fetch_failed: git store {git_server.url}/ops.git: fetching main: "
    )
    assert "503" in down.stale_reason and TOKEN not in down.stale_reason
    assert [s.name for s in down.desired.config.services] == ["web"]

    git_server.unavailable = False
    assert source.current().stale is False


def test_git_store_stopped_at_start_uses_the_cache(tmp_path: Path) -> None:
    repo, state = tmp_path / "ops", tmp_path / "st"
    commit_tree(repo, {"nodes/edge.yaml": GOOD}, "one")
    with GitHTTPServer({"ops.git": repo}, token=TOKEN) as server:
        url = f"{server.url}/ops.git"
        store = GitConfigStore(url, "main", TOKEN, tmp_path / "c")
        revision = ConfigSource(store, ["edge"], LastGood(state)).current()
    # the server is gone (connection refused); as after an agent restart: a new
    # store and source on the same state_dir
    restarted = ConfigSource(
        GitConfigStore(url, "main", TOKEN, tmp_path / "c"), ["edge"], LastGood(state)
    )
    snapshot = restarted.current()
    assert snapshot.stale is True
    assert snapshot.stale_reason == (
        f"config_fetch_failed: git store {url}: fetching main: Connection refused"
    )
    assert snapshot.desired.revisions == revision.desired.revisions


# ---- S3 ------------------------------------------------------------------


def put(bucket: S3Bucket, text: str) -> None:
    bucket.server.admin.put_object(
        Bucket=bucket.name, Key="nodes/edge.yaml", Body=text.encode()
    )


def test_s3_invalid_config_stays_stale_across_304s(
    s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    put(s3_bucket, GOOD)
    store = s3_store(s3_bucket)
    statuses = record_statuses(store)
    source = ConfigSource(store, ["edge"], LastGood(tmp_path))
    assert source.current().stale is False

    put(s3_bucket, INVALID)
    first, second = source.current(), source.current()
    assert statuses == [200, 200, 304]
    assert first.stale and second.stale
    assert second.stale_reason.startswith(
        "config_invalid: nodes/edge.yaml: service web"
    )
    assert second.stale_since == first.stale_since is not None

    put(s3_bucket, BETTER)
    fixed = source.current()
    assert fixed.stale is False
    assert len(fixed.desired.config.services) == 2


def test_s3_unreachable_at_start_uses_the_cache(
    s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    put(s3_bucket, GOOD)
    fresh = ConfigSource(s3_store(s3_bucket), ["edge"], LastGood(tmp_path)).current()

    (port,) = free_ports(1)  # nothing listens there: connection refused
    down = S3ConfigStore(
        s3_bucket.name,
        endpoint_url=f"http://127.0.0.1:{port}",
        access_key="k",
        secret_key="s",
    )
    snapshot = ConfigSource(down, ["edge"], LastGood(tmp_path)).current()
    assert snapshot.stale is True
    assert snapshot.stale_reason.startswith(
        f"config_fetch_failed: s3 store {s3_bucket.name}: nodes/edge.yaml: "
        "Could not connect to the endpoint URL"
    )
    assert snapshot.desired.config == fresh.desired.config
    assert snapshot.desired.revisions == fresh.desired.revisions


def test_an_unchanged_config_is_not_parsed_again(
    store_dir: Path, tmp_path: Path
) -> None:
    source = ConfigSource(LocalDirStore(store_dir), ["edge"], LastGood(tmp_path / "st"))
    first = source.current().desired
    assert source.current().desired is first
    write(store_dir, "edge", GOOD.replace("web", "www"))
    changed = source.current().desired
    assert changed is not first
    assert [s.name for s in changed.config.services] == ["www"]
