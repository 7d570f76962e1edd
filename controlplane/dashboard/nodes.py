"""The node types page: what the object store serves to agents right now."""

from __future__ import annotations

import logging
import os

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from controlplane.dashboard.published import read_published, with_publishers
from controlplane.objectstore import ObjectStoreError, store_from_env

log = logging.getLogger(__name__)


@never_cache
@login_required
@require_safe
def node_types(request: HttpRequest) -> HttpResponse:
    """Each published node config, its services and the revision that published it.

    The store is read, not the database: this is what agents fetch, including
    configs written by hand or by the ``enrich`` command.
    """
    context: dict[str, object] = {"nodes": [], "store": "", "store_error": ""}
    try:
        store = store_from_env(os.environ)
        context["store"] = store.describe()
        nodes = read_published(store)
    except ObjectStoreError as exc:
        log.warning("reading published node configs failed error=%s", exc)
        context["store_error"] = str(exc)
    else:
        context["nodes"] = with_publishers(nodes)
        context["service_count"] = sum(len(node.services) for node in nodes)
    return render(request, "controlplane/nodes.html", context)
