"""The store an agent configuration names, with secrets read from files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nodeagent.config import AgentConfig, parse_agent_config
from nodeagent.stores import (
    GitConfigStore,
    LocalDirStore,
    S3ConfigStore,
    StoreError,
    fetch_desired,
    store_for,
)
from tests.conftest import S3Bucket
from tests.gitserver import GitHTTPServer, commit_tree

NODE = {
    "node": "edge",
    "services": [
        {
            "name": "web",
            "image": "/img/web.ext4",
            "kernel": "/img/vmlinux",
            "vcpus": 1,
            "memory_mb": 256,
            "kernel_args": "console=ttyS0",
        }
    ],
}


def test_local_store_from_config(tmp_path: Path) -> None:
    (tmp_path / "nodes").mkdir()
    (tmp_path / "nodes" / "edge.yaml").write_text(yaml.safe_dump(NODE))
    config, _ = parse_agent_config(
        {"store_type": "local", "store_dir": str(tmp_path), "node_name": "edge"}
    )
    store = store_for(config)
    assert isinstance(store, LocalDirStore)
    desired = fetch_desired(store, config.labels)
    assert [s.name for s in desired.config.services] == ["web"]


def test_git_store_reads_the_token_from_its_file(tmp_path: Path) -> None:
    commit_tree(tmp_path / "origin", {"nodes/edge.yaml": yaml.safe_dump(NODE)}, "n")
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    with GitHTTPServer({"ops.git": tmp_path / "origin"}, token="s3cret-token") as git:
        config, _ = parse_agent_config(
            {
                "store_url": f"{git.url}/ops.git",
                "store_token_file": str(token_file),
                "state_dir": str(tmp_path / "state"),
                "node_name": "edge",
            }
        )
        store = store_for(config)
        assert isinstance(store, GitConfigStore)
        desired = fetch_desired(store, config.labels)
    assert [s.name for s in desired.config.services] == ["web"]
    assert (tmp_path / "state" / "git-store").is_dir()


def s3_config(bucket: S3Bucket, tmp_path: Path, secret: str) -> AgentConfig:
    (tmp_path / "ak").write_text(bucket.server.access_key + "\n")
    (tmp_path / "sk").write_text(secret + "\n")
    config, _ = parse_agent_config(
        {
            "store_type": "s3",
            "s3_bucket": bucket.name,
            "s3_prefix": "prod/",
            "s3_region": bucket.server.region,
            "s3_endpoint_url": bucket.server.endpoint_url,
            "s3_access_key_file": str(tmp_path / "ak"),
            "s3_secret_key_file": str(tmp_path / "sk"),
            "node_name": "edge",
        }
    )
    return config


def test_s3_store_signs_with_the_credentials_in_the_files(
    s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    s3_bucket.store("prod/").put("nodes/edge.yaml", yaml.safe_dump(NODE).encode())
    good = store_for(s3_config(s3_bucket, tmp_path, s3_bucket.server.secret_key))
    assert isinstance(good, S3ConfigStore)
    desired = fetch_desired(good, ("edge",))
    assert [s.name for s in desired.config.services] == ["web"]
    bad = store_for(s3_config(s3_bucket, tmp_path, "not-the-secret"))
    with pytest.raises(StoreError) as caught:
        fetch_desired(bad, ("edge",))
    assert "not-the-secret" not in str(caught.value)


@pytest.mark.parametrize(("content", "reason"), [("\n", "is empty"), (None, "No such")])
def test_unusable_secret_files_name_the_key(
    tmp_path: Path, content: str | None, reason: str
) -> None:
    token = tmp_path / "token"
    if content is not None:
        token.write_text(content)
    config, _ = parse_agent_config(
        {"store_url": "http://127.0.0.1:9/ops.git", "store_token_file": str(token)}
    )
    with pytest.raises(StoreError, match=f"store_token_file: .*{reason}"):
        store_for(config)
