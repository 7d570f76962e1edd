"""Which repository publishes which node type.

Several repositories may publish to one object store. A repository owns the node
types that its latest published revision produced: its runs delete only those
when they stop producing them, and a node type owned by another repository is
refused instead of overwritten.
"""

from __future__ import annotations

from collections.abc import Iterable

from controlplane.models import ConfigRepository, NodeConfigOutput, Revision


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
            found.append(
                f"node type {node_type} is published by repository {other.name}"
            )
    return found
