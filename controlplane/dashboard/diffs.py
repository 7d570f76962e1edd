"""What a revision changed in the published node configs, per node type.

Each revision is compared with the previous succeeded revision of the same
repository, since that is what the agents were running before it published.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from django.db.models import Q

from controlplane.models import NodeConfigOutput, Revision

CONTEXT_LINES = 3
# A page with a diff of tens of thousands of lines helps nobody and is slow to
# render; the whole YAML is still shown next to the diff.
MAX_DIFF_LINES = 3000


class Change(StrEnum):
    """How a node type's config differs from the previous succeeded revision."""

    NEW = "new node type"
    REMOVED = "removed node type"
    CHANGED = "changed"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class DiffLine:
    """One line of a unified diff; ``kind`` is its CSS class."""

    kind: str  # "added", "removed", "context", "hunk" or "file"
    text: str


@dataclass(frozen=True)
class NodeTypeDiff:
    """A node type's change, its diff lines, and this revision's output if any."""

    node_type: str
    change: Change
    output: NodeConfigOutput | None
    lines: list[DiffLine] = field(default_factory=list)
    added: int = 0
    removed: int = 0
    truncated: int = 0  # diff lines left out past MAX_DIFF_LINES


def previous_succeeded(revision: Revision) -> Revision | None:
    """The last succeeded revision of the same repository queued before this one."""
    earlier = Q(queued_at__lt=revision.queued_at) | Q(
        queued_at=revision.queued_at, id__lt=revision.pk
    )
    return (
        Revision.objects.filter(
            earlier,
            repository_id=revision.repository_id,
            status=Revision.Status.SUCCEEDED,
        )
        .order_by("-queued_at", "-id")
        .first()
    )


def _kind(line: str) -> str:
    if line.startswith("@@"):
        return "hunk"
    if line.startswith("+"):
        return "added"
    if line.startswith("-"):
        return "removed"
    return "context"


def diff_lines(old: str, new: str, old_name: str, new_name: str) -> list[DiffLine]:
    """The unified diff of ``old`` and ``new``, each line with its kind."""
    lines = difflib.unified_diff(
        old.splitlines(),
        new.splitlines(),
        fromfile=old_name,
        tofile=new_name,
        n=CONTEXT_LINES,
        lineterm="",
    )
    # Only the first two lines are file headers: a removed YAML document
    # separator ("---") also reads "----" further down.
    return [
        DiffLine("file" if index < 2 else _kind(line), line)
        for index, line in enumerate(lines)
    ]


def _node_type_diff(
    node_type: str,
    old: NodeConfigOutput | None,
    new: NodeConfigOutput | None,
    names: tuple[str, str],
) -> NodeTypeDiff:
    if old is None:
        change = Change.NEW
    elif new is None:
        change = Change.REMOVED
    elif old.sha256 == new.sha256 and old.content == new.content:
        return NodeTypeDiff(node_type, Change.UNCHANGED, new)
    else:
        change = Change.CHANGED
    old_text = old.content if old else ""
    new_text = new.content if new else ""
    old_name = f"{names[0]}/{node_type}.yaml" if old else "/dev/null"
    new_name = f"{names[1]}/{node_type}.yaml" if new else "/dev/null"
    lines = diff_lines(old_text, new_text, old_name, new_name)
    return NodeTypeDiff(
        node_type=node_type,
        change=change,
        output=new,
        lines=lines[:MAX_DIFF_LINES],
        added=sum(line.kind == "added" for line in lines),
        removed=sum(line.kind == "removed" for line in lines),
        truncated=max(len(lines) - MAX_DIFF_LINES, 0),
    )


def compare_outputs(
    new: Iterable[NodeConfigOutput],
    old: Iterable[NodeConfigOutput],
    names: tuple[str, str] = ("previous", "this"),
) -> list[NodeTypeDiff]:
    """One entry per node type in either set, sorted by node type.

    ``names`` label the two sides in the diff headers (``a/``, ``b/`` in git).
    """
    new_by_type = {output.node_type: output for output in new}
    old_by_type = {output.node_type: output for output in old}
    return [
        _node_type_diff(
            node_type, old_by_type.get(node_type), new_by_type.get(node_type), names
        )
        for node_type in sorted(new_by_type.keys() | old_by_type.keys())
    ]
