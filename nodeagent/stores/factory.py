"""The config store an agent configuration names, secrets read from their files."""

from __future__ import annotations

from pathlib import Path

from nodeagent.config import AgentConfig
from nodeagent.stores.base import ConfigStore, StoreError
from nodeagent.stores.local import LocalDirStore


def read_secret_file(key: str, path: str | None) -> str | None:
    """The secret in ``path`` (trailing newline dropped); errors name the key only."""
    if path is None:
        return None
    try:
        secret = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise StoreError(
            f"{key}: cannot read {path}: {reason}", transient=False
        ) from None
    if not secret:
        raise StoreError(f"{key}: {path} is empty", transient=False)
    return secret


def store_for(config: AgentConfig) -> ConfigStore:
    """Build the store of ``config.store_type``; the Git cache lives in state_dir."""
    if config.store_type == "local":
        assert config.store_dir is not None  # checked when the config was loaded
        return LocalDirStore(config.store_dir)
    if config.store_type == "git":
        from nodeagent.stores.git import GitConfigStore  # dulwich: only when used

        token = read_secret_file("store_token_file", config.store_token_file)
        cache = Path(config.state_dir) / "git-store"
        return GitConfigStore(config.store_url, config.store_branch, token, cache)
    from nodeagent.stores.s3 import S3ConfigStore  # boto3: only when used

    return S3ConfigStore(
        config.s3_bucket,
        prefix=config.s3_prefix,
        region=config.s3_region or "us-east-1",
        endpoint_url=config.s3_endpoint_url or None,
        access_key=read_secret_file("s3_access_key_file", config.s3_access_key_file),
        secret_key=read_secret_file("s3_secret_key_file", config.s3_secret_key_file),
    )
