"""Node configs read back from the object store, as agents fetch them.

The one place that reads ``nodes/<node-type>.yaml`` from the store, checks it the
way an agent checks it, and names the revision that published its content. The
dashboard, the node-config API and node status build their own views on it.

A revision published a content if one of its node-config outputs has that
SHA-256 for that node type and the revision was published or succeeded; of
several, the newest (queued last) is the one named.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml
from django.db.models import Q

from controlplane.models import NodeConfigOutput, Revision
from controlplane.objectstore import ObjectNotFound, ObjectStore
from controlplane.publish import NODE_SUFFIX, NODES_PREFIX, is_node_config_key
from nodeagent.spec import NodeConfig, validate_node_config
from nodeagent.spec.problems import yaml_error


@dataclass(frozen=True)
class StoredConfig:
    """One node config as found in the store, with what an agent would say of it."""

    key: str
    node_type: str
    etag: str  # as the store gives it (S3's is quoted)
    sha256: str
    data: bytes
    config: NodeConfig | None  # None when an agent would refuse it
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        """The YAML text, undecodable bytes replaced."""
        return self.data.decode("utf-8", errors="replace")


def node_type_of(key: str) -> str:
    """``general-purpose`` for ``nodes/general-purpose.yaml``, else ``""``.

    Agents fetch exactly ``nodes/<label>.yaml``; anything else under ``nodes/``
    is never read by a node, so it is not a published config.
    """
    if not is_node_config_key(key):
        return ""
    return key.removeprefix(NODES_PREFIX).removesuffix(NODE_SUFFIX)


def check_stored(key: str, data: bytes, etag: str) -> StoredConfig:
    """Validate stored bytes the way an agent would."""
    config: NodeConfig | None = None
    warnings: tuple[str, ...] = ()
    try:
        raw = yaml.safe_load(data.decode("utf-8", errors="replace"))
    except yaml.YAMLError as exc:
        errors: tuple[str, ...] = (f"{key}: {yaml_error(exc)}",)
    else:
        config, problems, notes = validate_node_config(raw, key)
        errors = tuple(str(problem) for problem in problems)
        warnings = tuple(str(note) for note in notes)
    return StoredConfig(
        key=key,
        node_type=node_type_of(key),
        etag=etag,
        sha256=hashlib.sha256(data).hexdigest(),
        data=data,
        config=config,
        errors=errors,
        warnings=warnings,
    )


def read_stored(store: ObjectStore, key: str) -> StoredConfig | None:
    """The config at ``key``, or None if there is none.

    Other store errors (unreachable, refused) propagate for the caller to word.
    """
    try:
        stored = store.get(key)
    except ObjectNotFound:
        return None
    return check_stored(key, stored.data, stored.etag)


def list_stored(store: ObjectStore) -> list[StoredConfig]:
    """Every node config in ``store``, sorted by node type.

    A config deleted by a publish between the listing and the read is left out.
    """
    keys = sorted(key for key in store.list(NODES_PREFIX) if node_type_of(key))
    return [config for key in keys if (config := read_stored(store, key))]


def publishing_outputs(query: Q) -> Any:
    """Node-config outputs of publishing revisions matching ``query``, newest first."""
    return NodeConfigOutput.objects.filter(
        Q(revision__published=True) | Q(revision__status=Revision.Status.SUCCEEDED),
        query,
    ).order_by("-revision__queued_at", "-revision_id")


def publishing_revisions(
    contents: Iterable[tuple[str, str]],
) -> dict[tuple[str, str], Revision]:
    """(node type, sha256) -> the newest revision that published that content.

    Contents no revision published (written by hand or by ``manage.py enrich``)
    are absent. Two queries, however many contents are asked for.
    """
    wanted = set(contents)
    if not wanted:
        return {}
    query = Q(node_type__in={t for t, _ in wanted}, sha256__in={s for _, s in wanted})
    latest: dict[tuple[str, str], int] = {}
    for node_type, sha256, revision_id in publishing_outputs(query).values_list(
        "node_type", "sha256", "revision_id"
    ):
        if (node_type, sha256) in wanted:
            latest.setdefault((node_type, sha256), revision_id)
    revisions = Revision.objects.select_related("repository").in_bulk(latest.values())
    return {content: revisions[pk] for content, pk in latest.items()}
