"""Pages with a live part that follows the database without a reload.

The live part is a template of its own: for ``?fragment=1`` the view renders
only that, and ``static/autorefresh.js`` fetches it every few seconds and swaps
it in. A live part that ends with ``data-refresh-done`` (runs that have all
finished) stops the fetching: nothing shown there can change any more.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from controlplane.models import Revision

REFRESH_SECONDS = 5
# Runs take seconds; their pages follow them closely while any is unfinished.
RUN_REFRESH_SECONDS = 2


def live_page(
    request: HttpRequest,
    template: str,
    fragment: str,
    context: dict[str, Any],
    *,
    refresh_seconds: int = REFRESH_SECONDS,
    until_done: bool = False,
) -> HttpResponse:
    """The whole page, or only its live part when the page's script asks.

    ``until_done``: the page says it updates only while runs are unfinished.
    """
    context = context | {
        "fragment": fragment,
        "refresh_seconds": refresh_seconds,
        "until_done": until_done,
    }
    if request.GET.get("fragment") == "1":
        return render(request, fragment, context)
    return render(request, template, context)


def any_unfinished(revisions: Iterable[Revision | None]) -> bool:
    """Whether any of ``revisions`` is still queued or running."""
    return any(r is not None and not r.finished for r in revisions)


def run_page(
    request: HttpRequest, template: str, fragment: str, context: dict[str, Any]
) -> HttpResponse:
    """A page of runs: live, and closely, until every run it shows has ended."""
    return live_page(
        request,
        template,
        fragment,
        context,
        refresh_seconds=RUN_REFRESH_SECONDS,
        until_done=True,
    )
