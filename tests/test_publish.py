"""Publishing enrichment results: all writes first, stale deletes after, never a wipe.

Every test runs against a LocalStore and against the real S3 server (conftest).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest

from controlplane.enrichment import PipelineResult, run_pipeline
from controlplane.objectstore import LocalStore, ObjectStore
from controlplane.publish import (
    PublishFailed,
    PublishRefused,
    is_node_config_key,
    node_config_key,
    publish,
)
from nodeagent.spec import Problem
from tests.conftest import S3Bucket
from tests.specrepo import base_service, write_repo

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "enricher-input"
# Longer than a file name may be (255) and than an S3 key may be (1024): a write
# that both stores really reject.
UNWRITABLE_NODE_TYPE = "n" * 1100


@pytest.fixture(scope="module")
def example() -> PipelineResult:
    result = run_pipeline(EXAMPLE)
    assert result.ok
    assert sorted(result.configs) == ["compute", "general-purpose"]
    return result


def snapshot(store: ObjectStore) -> dict[str, bytes]:
    return {key: store.get(key).data for key in store.list("")}


def test_publish_writes_every_node_config_with_its_etag_and_hash(
    store: ObjectStore, example: PipelineResult
) -> None:
    report = publish(store, example)

    assert store.list("") == ["nodes/compute.yaml", "nodes/general-purpose.yaml"]
    assert sorted(report.configs) == ["compute", "general-purpose"]
    for node_type, text in example.configs.items():
        data = text.encode()
        stored = store.get(f"nodes/{node_type}.yaml")
        published = report.configs[node_type]
        assert stored.data == data
        assert published.key == f"nodes/{node_type}.yaml"
        assert published.etag == stored.etag == f'"{hashlib.md5(data).hexdigest()}"'
        assert published.sha256 == hashlib.sha256(data).hexdigest()
        assert published.size_bytes == len(data)
    assert report.deleted == []
    assert report.store == store.describe()


def test_publishing_the_same_result_again_changes_nothing(
    store: ObjectStore, example: PipelineResult
) -> None:
    first = publish(store, example)
    before = snapshot(store)

    second = publish(store, example)

    assert snapshot(store) == before
    assert second.configs == first.configs
    assert second.deleted == []


def test_publish_deletes_node_configs_the_result_dropped_and_nothing_else(
    store: ObjectStore, example: PipelineResult
) -> None:
    with_gpu = PipelineResult(configs={**example.configs, "gpu": "node: gpu\n"})
    publish(store, with_gpu)
    unrelated = {
        "nodes/README.md": b"not a node config",
        "nodes/archive/old.yaml": b"not a direct child",
        "nodes.yaml": b"outside nodes/",
        "images/gpu.yaml": b"another prefix",
    }
    for key, data in unrelated.items():
        store.put(key, data)

    report = publish(store, example)

    assert report.deleted == ["nodes/gpu.yaml"]
    assert store.list("nodes/") == [
        "nodes/README.md",
        "nodes/archive/old.yaml",
        "nodes/compute.yaml",
        "nodes/general-purpose.yaml",
    ]
    for key, data in unrelated.items():
        assert store.get(key).data == data


def test_publish_refuses_a_result_with_errors_and_writes_or_deletes_nothing(
    store: ObjectStore,
) -> None:
    store.put("nodes/old.yaml", b"last good config")
    problem = Problem(file="services/web.yaml", service="web", message="missing image")
    result = PipelineResult(configs={"compute": "node: compute\n"}, errors=[problem])

    with pytest.raises(PublishRefused, match="service web: missing image"):
        publish(store, result)

    assert snapshot(store) == {"nodes/old.yaml": b"last good config"}


def test_publish_refuses_an_invalid_repository_from_the_pipeline(
    store: ObjectStore, tmp_path: Path
) -> None:
    store.put("nodes/general-purpose.yaml", b"last good config")
    broken = base_service("web")
    del broken["image"]
    result = run_pipeline(write_repo(tmp_path, [broken, base_service("api")]))

    with pytest.raises(PublishRefused, match=r"1 validation error\(s\)"):
        publish(store, result)

    assert snapshot(store) == {"nodes/general-purpose.yaml": b"last good config"}


def test_publish_refuses_an_empty_result_unless_explicitly_allowed(
    store: ObjectStore,
) -> None:
    store.put("nodes/compute.yaml", b"config")
    store.put("other/keep.txt", b"keep")

    with pytest.raises(PublishRefused, match="would delete every node config"):
        publish(store, PipelineResult())
    assert store.list("") == ["nodes/compute.yaml", "other/keep.txt"]

    report = publish(store, PipelineResult(), allow_empty=True)

    assert report.deleted == ["nodes/compute.yaml"]
    assert store.list("") == ["other/keep.txt"]


def test_a_failed_write_stops_the_publish_before_any_delete(
    store: ObjectStore, example: PipelineResult
) -> None:
    store.put("nodes/stale.yaml", b"still served to agents")
    configs = {
        "aaa": "node: aaa\n",
        UNWRITABLE_NODE_TYPE: "node: too-long\n",
        "zzz": "node: zzz\n",
    }

    with pytest.raises(PublishFailed, match="nothing deleted") as excinfo:
        publish(store, PipelineResult(configs=configs))

    assert excinfo.value.written == ["nodes/aaa.yaml"]
    assert excinfo.value.deleted == []
    assert store.list("") == ["nodes/aaa.yaml", "nodes/stale.yaml"]
    assert store.get("nodes/stale.yaml").data == b"still served to agents"


def test_a_write_blocked_on_disk_deletes_nothing(
    tmp_path: Path, example: PipelineResult
) -> None:
    store = LocalStore(tmp_path)
    store.put("nodes/stale.yaml", b"still served")
    # A directory where nodes/general-purpose.yaml must go: the rename fails.
    store.put("nodes/general-purpose.yaml/blocker", b"")

    with pytest.raises(PublishFailed, match=r"writing nodes/general-purpose\.yaml"):
        publish(store, example)

    assert store.get("nodes/stale.yaml").data == b"still served"
    assert store.get("nodes/compute.yaml").data == example.configs["compute"].encode()


@pytest.mark.parametrize("node_type", ["", "a/b", "a\\b", "a\0b"])
def test_publish_refuses_node_types_that_are_not_one_key_segment(
    store: ObjectStore, node_type: str
) -> None:
    result = PipelineResult(configs={"ok": "node: ok\n", node_type: "node: bad\n"})

    with pytest.raises(PublishRefused, match="refusing to publish"):
        publish(store, result)

    assert store.list("") == []


def test_publish_to_a_prefixed_s3_store_leaves_other_prefixes_alone(
    s3_bucket: S3Bucket, example: PipelineResult
) -> None:
    staging = s3_bucket.store(prefix="staging/")
    production = s3_bucket.store(prefix="production/")
    publish(production, example)
    publish(staging, PipelineResult(configs={"gpu": "node: gpu\n"}))

    report = publish(staging, PipelineResult(), allow_empty=True)

    assert report.deleted == ["nodes/gpu.yaml"]
    assert s3_bucket.raw_keys() == [
        "production/nodes/compute.yaml",
        "production/nodes/general-purpose.yaml",
    ]


def test_publish_logs_counts_and_store_in_key_value_form(
    store: ObjectStore, example: PipelineResult, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="controlplane.publish")

    publish(store, example)

    messages = [r.getMessage() for r in caplog.records]
    assert messages == [f"published store={store.describe()} configs=2 deleted=0"]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("nodes/web.yaml", True),
        ("nodes/.yaml", True),
        ("nodes/web.yml", False),
        ("nodes/a/web.yaml", False),
        ("nodesweb.yaml", False),
        ("other/nodes/web.yaml", False),
    ],
)
def test_only_direct_yaml_children_of_nodes_count_as_node_configs(
    key: str, expected: bool
) -> None:
    assert is_node_config_key(key) is expected


def test_node_config_key_follows_the_store_layout() -> None:
    assert node_config_key("general-purpose") == "nodes/general-purpose.yaml"
