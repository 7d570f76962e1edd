"""Repository pages: the home page (every repository and its last run), one
repository's settings and runs, and "Run now"."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import OuterRef, Subquery
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST, require_safe

from controlplane.dashboard.access import is_operator, operator_of
from controlplane.dashboard.live import any_unfinished, run_page
from controlplane.dashboard.present import RunRow, redact_url
from controlplane.dashboard.runlist import run_list
from controlplane.models import ConfigRepository, Revision
from controlplane.runs import request_run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RepositoryRow:
    """A repository with its latest run and its latest succeeded run."""

    repository: ConfigRepository
    last_run: RunRow | None
    last_success: RunRow | None


def _latest(status: str = "") -> Subquery:
    runs = Revision.objects.filter(repository=OuterRef("pk"))
    if status:
        runs = runs.filter(status=status)
    return Subquery(runs.order_by("-queued_at", "-id").values("pk")[:1])


def repository_rows() -> list[RepositoryRow]:
    """Every repository, by name, with its latest and latest succeeded runs."""
    repositories = list(
        ConfigRepository.objects.annotate(
            last_run_id=_latest(), last_success_id=_latest(Revision.Status.SUCCEEDED)
        )
    )
    wanted = {repo.last_run_id for repo in repositories} | {
        repo.last_success_id for repo in repositories
    }
    runs = {
        pk: RunRow.of(run)
        for pk, run in Revision.objects.in_bulk(wanted - {None}).items()
    }
    return [
        RepositoryRow(repo, runs.get(repo.last_run_id), runs.get(repo.last_success_id))
        for repo in repositories
    ]


@never_cache
@login_required
@require_safe
def index(request: HttpRequest) -> HttpResponse:
    """Home: each config repository with its last run and a "Run now" button."""
    rows = repository_rows()
    context = {
        "rows": rows,
        "can_run": is_operator(request.user),
        "unfinished": any_unfinished(
            row.last_run.revision if row.last_run else None for row in rows
        ),
    }
    return run_page(
        request,
        "controlplane/repositories.html",
        "controlplane/includes/repositories_table.html",
        context,
    )


@never_cache
@login_required
@require_safe
def repository(request: HttpRequest, name: str) -> HttpResponse:
    """One repository: its settings (secret names only) and its runs."""
    repo = get_object_or_404(ConfigRepository, name=name)
    runs = run_list(request, Revision.objects.filter(repository=repo))
    context = {
        "repository": repo,
        "clone_url": redact_url(repo.clone_url),
        "runs": runs,
        "statuses": Revision.Status.choices,
        "can_run": is_operator(request.user),
        "unfinished": any_unfinished(row.revision for row in runs.rows),
    }
    return run_page(
        request,
        "controlplane/repository.html",
        "controlplane/includes/repository_runs.html",
        context,
    )


@login_required
@require_POST
def run_now(request: HttpRequest, name: str) -> HttpResponse:
    """Queue a manual run of the repository's branch head (operators only)."""
    user = operator_of(request)
    repo = get_object_or_404(ConfigRepository, name=name)
    if not repo.active:
        messages.error(
            request, f"{repo.name} is inactive; activate it before requesting a run."
        )
        return redirect("controlplane:repository", name=repo.name)
    revision = request_run(repo, trigger=Revision.Trigger.MANUAL, requested_by=user)
    log.info(
        "manual run requested repository=%s revision=%s user=%s",
        repo.name,
        revision.pk,
        user.get_username(),
    )
    messages.success(request, f"Run #{revision.pk} of {repo.name} queued.")
    return redirect("controlplane:revision", pk=revision.pk)
