"""Config stores (S3, Git, local directory) and the merged desired state.

The Git and S3 stores load dulwich and boto3, tens of megabytes together, so
they are imported on first use: an agent pays only for the store it runs.
"""

from typing import TYPE_CHECKING, Any

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
from nodeagent.stores.local import LocalDirStore

if TYPE_CHECKING:
    from nodeagent.stores.git import GitConfigStore
    from nodeagent.stores.s3 import S3ConfigStore


def __getattr__(name: str) -> Any:
    if name == "GitConfigStore":
        from nodeagent.stores.git import GitConfigStore

        return GitConfigStore
    if name == "S3ConfigStore":
        from nodeagent.stores.s3 import S3ConfigStore

        return S3ConfigStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
