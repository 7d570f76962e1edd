"""Publish an enrichment result to the object store, safely for running agents.

The order is the point: every node config of the revision is written before any
stale one is deleted, so an agent never sees its node type vanish half way through a
publish; nothing is written when validation failed; and an empty result, which
would delete every node config, is refused unless the caller asks for it.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field

from controlplane.enrichment import PipelineResult
from controlplane.enrichment.render import content_hash
from controlplane.objectstore import ObjectStore, ObjectStoreError, validate_key

log = logging.getLogger(__name__)

NODES_PREFIX = "nodes/"
NODE_SUFFIX = ".yaml"
_ERRORS_IN_MESSAGE = 5


class PublishError(Exception):
    """Publishing did not complete."""


class PublishRefused(PublishError):
    """Publishing was refused before anything was written."""


class PublishFailed(PublishError):
    """A store operation failed part way; ``written``/``deleted`` say how far."""

    def __init__(self, message: str, written: list[str], deleted: list[str]) -> None:
        super().__init__(message)
        self.written = written
        self.deleted = deleted


@dataclass(frozen=True)
class PublishedConfig:
    """One node config as stored: its key, the store's ETag, SHA-256 and size."""

    node_type: str
    key: str
    etag: str
    sha256: str
    size_bytes: int


@dataclass
class PublishReport:
    """What a publish wrote (by node type) and which stale keys it deleted."""

    store: str
    configs: dict[str, PublishedConfig] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)


def node_config_key(node_type: str) -> str:
    """The store key of a node type's config: ``nodes/<node-type>.yaml``."""
    return f"{NODES_PREFIX}{node_type}{NODE_SUFFIX}"


def is_node_config_key(key: str) -> bool:
    """True for direct children of ``nodes/`` ending in ``.yaml``."""
    name = key.removeprefix(NODES_PREFIX)
    return key.startswith(NODES_PREFIX) and "/" not in name and name.endswith(".yaml")


def publish(
    store: ObjectStore,
    result: PipelineResult,
    *,
    allow_empty: bool = False,
    owned: Collection[str] | None = None,
) -> PublishReport:
    """Write every node config of ``result``, then delete node configs it dropped.

    ``owned`` are the node types this publisher wrote before: only those are
    deleted when the result drops them, so publishers sharing a store (several
    repositories) leave each other's configs alone. Without it, every
    ``nodes/*.yaml`` not in the result is stale.

    Raises ``PublishRefused`` (nothing written) for a result with errors, an empty
    result without ``allow_empty``, or a node type that cannot be a key; raises
    ``PublishFailed`` if the store fails, and deletes nothing if any write failed.
    """
    _check_publishable(result, allow_empty)
    report = PublishReport(store=store.describe())
    for node_type in sorted(result.configs):
        report.configs[node_type] = _write(store, node_type, result, report)
    candidates = None if owned is None else {node_config_key(t) for t in owned}
    for key in _stale_keys(store, report, candidates):
        _delete(store, key, report)
    log.info(
        "published store=%s configs=%d deleted=%d",
        report.store,
        len(report.configs),
        len(report.deleted),
    )
    return report


def _check_publishable(result: PipelineResult, allow_empty: bool) -> None:
    if result.errors:
        shown = "; ".join(str(p) for p in result.errors[:_ERRORS_IN_MESSAGE])
        more = len(result.errors) - _ERRORS_IN_MESSAGE
        suffix = f"; and {more} more" if more > 0 else ""
        raise PublishRefused(
            f"refusing to publish: {len(result.errors)} validation error(s): "
            f"{shown}{suffix}"
        )
    if not result.configs and not allow_empty:
        raise PublishRefused(
            "refusing to publish an empty result: it would delete every node "
            "config (pass allow_empty to do that on purpose)"
        )
    for node_type in result.configs:
        if not node_type or "/" in node_type:
            raise PublishRefused(f"refusing to publish: bad node type {node_type!r}")
        try:
            validate_key(node_config_key(node_type))
        except ObjectStoreError as exc:
            raise PublishRefused(f"refusing to publish: node type {exc}") from exc


def _write(
    store: ObjectStore, node_type: str, result: PipelineResult, report: PublishReport
) -> PublishedConfig:
    key = node_config_key(node_type)
    text = result.configs[node_type]
    data = text.encode()
    try:
        etag = store.put(key, data)
    except ObjectStoreError as exc:
        log.error("publish write failed key=%s store=%s", key, report.store)
        raise _failed(f"writing {key}; nothing deleted: {exc}", report) from exc
    log.debug("node config written key=%s etag=%s", key, etag)
    return PublishedConfig(
        node_type=node_type,
        key=key,
        etag=etag,
        sha256=content_hash(text),
        size_bytes=len(data),
    )


def _stale_keys(
    store: ObjectStore, report: PublishReport, candidates: set[str] | None
) -> list[str]:
    current = {config.key for config in report.configs.values()}
    try:
        keys = store.list(NODES_PREFIX)
    except ObjectStoreError as exc:
        raise _failed(
            f"listing {NODES_PREFIX}; nothing deleted: {exc}", report
        ) from exc
    stale = [k for k in keys if is_node_config_key(k) and k not in current]
    return stale if candidates is None else [k for k in stale if k in candidates]


def _delete(store: ObjectStore, key: str, report: PublishReport) -> None:
    try:
        store.delete(key)
    except ObjectStoreError as exc:
        raise _failed(f"deleting stale {key}: {exc}", report) from exc
    log.info("stale node config deleted key=%s", key)
    report.deleted.append(key)


def _failed(what: str, report: PublishReport) -> PublishFailed:
    written = [config.key for config in report.configs.values()]
    return PublishFailed(
        f"publish to {report.store} failed {what}", written, list(report.deleted)
    )
