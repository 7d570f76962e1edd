"""Config stores (S3, Git, local directory) and the merged desired state."""

from nodeagent.stores.base import MAX_CONFIG_BYTES, ConfigStore, Fetched, StoreError
from nodeagent.stores.desired import (
    ConfigInvalid,
    Desired,
    RawConfig,
    fetch_desired,
    fetch_raw,
    parse_desired,
)
from nodeagent.stores.factory import store_for
from nodeagent.stores.git import GitConfigStore
from nodeagent.stores.local import LocalDirStore
from nodeagent.stores.s3 import S3ConfigStore

__all__ = [
    "MAX_CONFIG_BYTES",
    "ConfigInvalid",
    "ConfigStore",
    "Desired",
    "Fetched",
    "GitConfigStore",
    "LocalDirStore",
    "RawConfig",
    "S3ConfigStore",
    "StoreError",
    "fetch_desired",
    "fetch_raw",
    "parse_desired",
    "store_for",
]
