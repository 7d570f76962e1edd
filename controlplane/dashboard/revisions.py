"""Run history: the list of revisions (all, or filtered) and one revision's record."""

from __future__ import annotations

import re

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from controlplane.dashboard.diffs import NodeTypeDiff, compare_outputs
from controlplane.dashboard.diffs import previous_succeeded as previous_of
from controlplane.dashboard.live import any_unfinished, run_page
from controlplane.dashboard.present import RunRow
from controlplane.dashboard.problems import group_problems, problem_count
from controlplane.dashboard.runlist import run_list
from controlplane.models import ConfigRepository, Revision

_SLUG = re.compile(r"[-a-zA-Z0-9_]+")


@never_cache
@login_required
@require_safe
def revision_list(request: HttpRequest) -> HttpResponse:
    """Runs of every repository, newest first; filter by repository and status."""
    revisions = Revision.objects.all()
    repository = request.GET.get("repository", "")
    if repository and _SLUG.fullmatch(repository):
        revisions = revisions.filter(repository__name=repository)
    elif repository:
        # Not a slug, so no repository's name; the database is not asked either,
        # as some characters (NUL on PostgreSQL) make it raise instead.
        revisions = revisions.none()
    runs = run_list(request, revisions)
    context = {
        "runs": runs,
        "statuses": Revision.Status.choices,
        "repositories": ConfigRepository.objects.values_list("name", flat=True),
        "repository": repository,
        "unfinished": any_unfinished(row.revision for row in runs.rows),
    }
    return run_page(
        request,
        "controlplane/revisions.html",
        "controlplane/includes/revision_runs.html",
        context,
    )


def _changes(revision: Revision, previous: Revision | None) -> list[NodeTypeDiff]:
    outputs = list(revision.outputs.all())
    # A failed run publishes nothing: comparing its empty output with the
    # previous run would claim that every node type was removed.
    if not outputs and revision.status != Revision.Status.SUCCEEDED:
        return []
    before = list(previous.outputs.all()) if previous else []
    names = (f"#{previous.pk}" if previous else "none", f"#{revision.pk}")
    return compare_outputs(outputs, before, names)


@never_cache
@login_required
@require_safe
def revision_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """One run: what was asked, how it went, its problems and what it published."""
    revision = get_object_or_404(
        Revision.objects.select_related("repository", "requested_by"), pk=pk
    )
    errors = group_problems(revision.errors)
    warnings = group_problems(revision.warnings)
    previous = previous_of(revision)
    context = {
        "revision": revision,
        "row": RunRow.of(revision),
        "errors": errors,
        "error_count": problem_count(errors),
        "warnings": warnings,
        "warning_count": problem_count(warnings),
        "previous": previous,
        "changes": _changes(revision, previous),
        "unfinished": not revision.finished,
    }
    return run_page(
        request,
        "controlplane/revision.html",
        "controlplane/includes/revision_live.html",
        context,
    )
