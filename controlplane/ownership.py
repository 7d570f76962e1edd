"""Which repository publishes which node type.

Several repositories may publish to one object store. A repository owns the node
types that its latest published revision produced: its runs delete only those
when they stop producing them, and a node type owned by another repository is
refused instead of overwritten. When the owner stops producing a node type, the
runs refused for it are run again (see :func:`waiting_for`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from controlplane.models import ConfigRepository, NodeConfigOutput, Revision

# How a refusal reads on the revision; waiting_for() reads it back.
_TAKEN = "node type {node_type} is published by repository {owner}"
_TAKEN_RE = re.compile(r"node type ([^\s;]+) is published by repository ([^\s;]+)")


def published_node_types(repository_id: int) -> set[str]:
    """Node types of the repository's latest published revision."""
    latest = (
        Revision.objects.filter(repository_id=repository_id, published=True)
        .order_by("-pk")
        .values_list("pk", flat=True)
        .first()
    )
    if latest is None:
        return set()
    outputs = NodeConfigOutput.objects.filter(revision_id=latest)
    return set(outputs.values_list("node_type", flat=True))


def conflicts(repository: ConfigRepository, node_types: Iterable[str]) -> list[str]:
    """Why ``repository`` may not publish ``node_types``: owned by another one."""
    wanted = set(node_types)
    found = []
    for other in ConfigRepository.objects.exclude(pk=repository.pk).order_by("name"):
        for node_type in sorted(wanted & published_node_types(other.pk)):
            found.append(_TAKEN.format(node_type=node_type, owner=other.name))
    return found


def waiting_for(owner: ConfigRepository, released: Iterable[str]) -> list[Revision]:
    """Other repositories' latest runs, refused a node type ``owner`` just released.

    A node type moves between repositories when the owner stops producing it; a
    run of the new home that was refused for it meanwhile can then succeed.
    """
    released = set(released)
    if not released:
        return []
    found = []
    others = ConfigRepository.objects.exclude(pk=owner.pk).filter(active=True)
    for other in others.order_by("name"):
        latest = Revision.objects.filter(repository=other).order_by("-pk").first()
        if latest is None or latest.status != Revision.Status.FAILED:
            continue
        refused = {
            node_type
            for node_type, by in _TAKEN_RE.findall(latest.failure)
            if by == owner.name
        }
        if refused & released:
            found.append(latest)
    return found
