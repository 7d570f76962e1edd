"""Run lists: the status filter and the pagination shared by every list of runs."""

from __future__ import annotations

from dataclasses import dataclass

from django.core.paginator import Page, Paginator
from django.db.models import QuerySet
from django.http import HttpRequest

from controlplane.dashboard.present import RunRow
from controlplane.models import Revision

PAGE_SIZE = 25
_SHOWN_INPUT = 40  # characters of a rejected filter value echoed back


@dataclass(frozen=True)
class RunList:
    """One page of runs, the filter applied and why a filter was ignored."""

    page: Page[Revision]
    rows: list[RunRow]
    status: str  # "" for every status
    notice: str


def status_filter(request: HttpRequest) -> tuple[str, str]:
    """The ``status`` query parameter if it is a known status, and a notice if not."""
    status = request.GET.get("status", "")
    if not status or status in Revision.Status.values:
        return status, ""
    return "", f"Unknown status “{status[:_SHOWN_INPUT]}”: showing runs of any status."


def run_list(request: HttpRequest, revisions: QuerySet[Revision]) -> RunList:
    """The page of ``revisions`` that the request's ``status`` and ``page`` ask for.

    A bad page number shows the nearest page instead of an error.
    """
    status, notice = status_filter(request)
    if status:
        revisions = revisions.filter(status=status)
    paginator = Paginator(
        revisions.select_related("repository", "requested_by"), PAGE_SIZE
    )
    page = paginator.get_page(request.GET.get("page"))
    return RunList(
        page=page,
        rows=[RunRow.of(revision) for revision in page],
        status=status,
        notice=notice,
    )
