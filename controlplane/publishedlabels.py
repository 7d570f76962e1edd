"""The node configs published for node types, as node status compares them.

Each label's config is read from the object store (``nodes/<label>.yaml``) and
validated as an agent validates it; its SHA-256 names the newest revision that
published that content, and so the Git commit it came from.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import yaml
from django.db.models import Q

from controlplane.models import Node, NodeConfigOutput, Revision
from controlplane.objectstore import InvalidKey, ObjectNotFound, ObjectStore
from controlplane.objectstore import store_from_env as _store_from_env
from controlplane.publish import node_config_key
from nodeagent.spec import validate_node_config


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
            stored = store.get(node_config_key(label))
        except (ObjectNotFound, InvalidKey):
            continue  # not published, or no node type an agent could fetch
        found[label] = parse_label(label, stored.data, stored.etag)
    commits = publishing_commits({(c.node_type, c.sha256) for c in found.values()})
    return {
        label: replace(config, commit=commits.get((label, config.sha256), ""))
        for label, config in found.items()
    }


def parse_label(node_type: str, data: bytes, etag: str) -> PublishedLabel:
    """A stored node config as :func:`derive` compares it (no commit yet)."""
    sha256 = hashlib.sha256(data).hexdigest()
    key = node_config_key(node_type)
    try:
        raw = yaml.safe_load(data.decode("utf-8", errors="replace"))
    except yaml.YAMLError:
        return PublishedLabel(node_type, etag.strip('"'), sha256, errors=("bad YAML",))
    config, errors, _warnings = validate_node_config(raw, key)
    services = {
        service.name: service.model_dump(mode="json")
        for service in (config.services if config else ())
    }
    return PublishedLabel(
        node_type,
        etag.strip('"'),
        sha256,
        services=services,
        errors=tuple(str(problem) for problem in errors),
    )


def _publishing_outputs(query: Q) -> Any:
    return (
        NodeConfigOutput.objects.filter(
            Q(revision__published=True) | Q(revision__status=Revision.Status.SUCCEEDED),
            query,
        )
        .order_by("-revision__queued_at", "-revision_id")
        .values_list("node_type", "sha256", "etag", "revision__commit_sha")
    )


def publishing_commits(wanted: set[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """(node type, sha256) -> commit of the newest revision that published it."""
    if not wanted:
        return {}
    query = Q(node_type__in={t for t, _ in wanted}, sha256__in={s for _, s in wanted})
    commits: dict[tuple[str, str], str] = {}
    for node_type, sha256, _etag, commit in _publishing_outputs(query):
        commits.setdefault((node_type, sha256), commit)
    return commits


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
    history: dict[tuple[str, str], str] = {}
    for node_type, sha256, etag, commit in _publishing_outputs(query):
        history.setdefault((node_type, sha256), commit)
        if etag:
            history.setdefault((node_type, etag.strip('"')), commit)
    return history
