"""Validation errors and warnings of a revision, grouped by file and service.

A revision stores them as a JSON list of ``{file, service, message}``; one bad
file often breaks several services, so the dashboard shows them file by file,
then service by service, the way an operator fixes them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass


@dataclass(frozen=True)
class ServiceProblems:
    """The messages about one service (``service == ""``: about the file itself)."""

    service: str
    messages: list[str]


@dataclass(frozen=True)
class FileProblems:
    """The problems found in one file (``file == ""``: not tied to a file)."""

    file: str
    services: list[ServiceProblems]

    @property
    def count(self) -> int:
        """How many messages the file has, over all its services."""
        return sum(len(group.messages) for group in self.services)


def _fields(entry: object) -> tuple[str, str, str]:
    # The list is written by our own task, but a row edited by hand or written
    # by an older version must still render rather than break the page.
    if not isinstance(entry, dict):
        return "", "", str(entry)
    return (
        str(entry.get("file") or ""),
        str(entry.get("service") or ""),
        str(entry.get("message") or ""),
    )


def group_problems(entries: object) -> list[FileProblems]:
    """Group ``entries`` by file, then service; both sorted, ``""`` first.

    Messages keep their recorded order within a service.
    """
    if not isinstance(entries, list):
        entries = [] if entries in (None, "") else [entries]
    by_file: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for entry in entries:
        file, service, message = _fields(entry)
        by_file[file][service].append(message)
    return [
        FileProblems(
            file=file,
            services=[
                ServiceProblems(service, by_service[service])
                for service in sorted(by_service)
            ],
        )
        for file, by_service in sorted(by_file.items())
    ]


def problem_count(groups: list[FileProblems]) -> int:
    """All messages in ``groups``."""
    return sum(group.count for group in groups)
