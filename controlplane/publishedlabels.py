"""The node configs published for node types, as node status compares them.

Each label's config is read from the object store (``nodes/<label>.yaml``) and
checked by :mod:`controlplane.publishedconfigs`; its content names the newest
revision that published it, and so the Git commit it came from.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from django.db.models import Q

from controlplane.models import Node
from controlplane.objectstore import InvalidKey, ObjectStore
from controlplane.objectstore import store_from_env as _store_from_env
from controlplane.publish import node_config_key
from controlplane.publishedconfigs import (
    StoredConfig,
    publishing_outputs,
    publishing_revisions,
    read_stored,
)


@dataclass(frozen=True)
class PublishedLabel:
    """The node config published for one node type, as :func:`derive` needs it."""

    node_type: str
    etag: str  # without quotes, as an S3 agent reports it
    sha256: str  # of the content, as a local-directory agent reports it
    commit: str = ""  # of the revision that published this content; "" if unknown
    services: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    errors: tuple[str, ...] = ()  # why an agent would refuse the config

    def matches(self, applied: str) -> bool:
        """True if an agent reporting ``applied`` runs exactly this config."""
        accepted = {self.etag, self.sha256, self.commit} - {""}
        return applied.strip('"') in accepted

    def revision_like(self, applied: str) -> str:
        """The published revision in the same kind of string as ``applied``."""
        if applied and applied == self.sha256:
            return self.sha256
        if applied and applied == self.commit:
            return self.commit
        return self.etag


def report_revisions(report: Any) -> dict[str, str]:
    """Node type -> revision string, from a stored report (``{}`` if none)."""
    revisions = report.get("revisions") if isinstance(report, Mapping) else None
    if not isinstance(revisions, Mapping):
        return {}
    return {str(label): str(rev) for label, rev in revisions.items()}


def open_store() -> ObjectStore:
    """The object store the environment names (``FIREWORK_STORE`` ...)."""
    return _store_from_env(os.environ)


def load_published(
    store: ObjectStore, labels: Iterable[str]
) -> dict[str, PublishedLabel]:
    """The published config of each of ``labels`` that has one, with its commit."""
    found: dict[str, PublishedLabel] = {}
    for label in sorted(set(labels)):
        try:
            stored = read_stored(store, node_config_key(label))
        except InvalidKey:
            continue  # no node type an agent could fetch
        if stored is not None:
            found[label] = published_label(stored)
    revisions = publishing_revisions((c.node_type, c.sha256) for c in found.values())
    return {
        label: replace(config, commit=revision.commit_sha)
        if (revision := revisions.get((label, config.sha256)))
        else config
        for label, config in found.items()
    }


def published_label(stored: StoredConfig) -> PublishedLabel:
    """A stored node config as :func:`derive` compares it (no commit yet)."""
    services = {
        service.name: service.model_dump(mode="json")
        for service in (stored.config.services if stored.config else ())
    }
    return PublishedLabel(
        stored.node_type,
        stored.etag.strip('"'),
        stored.sha256,
        services=services,
        errors=stored.errors,
    )


def applied_history(nodes: Iterable[Node]) -> dict[tuple[str, str], str]:
    """(node type, revision string) -> commit, for what ``nodes`` report applied.

    A revision string is matched against both the SHA-256 and the ETag (quoted
    or not) of every node config a revision produced.
    """
    revisions = {
        rev.strip('"')
        for node in nodes
        for rev in report_revisions(node.last_report).values()
    }
    if not revisions:
        return {}
    quoted = {f'"{rev}"' for rev in revisions}
    query = Q(sha256__in=revisions) | Q(etag__in=revisions | quoted)
    outputs = publishing_outputs(query).values_list(
        "node_type", "sha256", "etag", "revision__commit_sha"
    )
    history: dict[tuple[str, str], str] = {}
    for node_type, sha256, etag, commit in outputs:
        history.setdefault((node_type, sha256), commit)
        if etag:
            history.setdefault((node_type, etag.strip('"')), commit)
    return history
