"""Receiving a node's status report: the hot path of the control plane.

Every node posts a report each tick, so this path is kept short: a plain
Django function instead of DRF's request, authentication, permission and
content-negotiation steps; one query for the token and its node; the report
checked in one pass (:mod:`controlplane.api.quickreport`), with DRF's
serializer only for the odd report; and, for a report whose states did not
change, one UPDATE (:func:`controlplane.nodereports.ingest`).

The answers are the ones DRF gave on this endpoint: the same order of checks
(credentials, then the node, then size, then the body), status codes, JSON
bodies and ``WWW-Authenticate`` header. :class:`~controlplane.api.nodes.NodeStatusView`
routes its POST here and stays the endpoint's description in the schema.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from rest_framework import status
from rest_framework.renderers import JSONRenderer

from controlplane.api.nodeauth import CHALLENGE, REFUSED_CREDENTIAL, IsOwnNode
from controlplane.api.nodebearer import bearer_node_token
from controlplane.api.nodeserializers import StatusReportSerializer
from controlplane.api.quickreport import quick_report
from controlplane.nodereports import ingest
from controlplane.nodetokens import node_token_for
from controlplane.webhook_body import (
    Rejected,
    body_stream,
    declared_length,
    read_capped,
)

log = logging.getLogger(__name__)

DEFAULT_REPORT_MAX_BYTES = 256 * 1024
NODE_CREDENTIAL_WANTED = (
    "this endpoint takes a node token: Authorization: Bearer fwn_..."
)


class ReportRefused(Exception):
    """A report answered with ``status`` and ``{"detail": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def report_max_bytes() -> int:
    """The largest status report accepted, in bytes."""
    return int(
        getattr(settings, "FIREWORK_NODE_REPORT_MAX_BYTES", DEFAULT_REPORT_MAX_BYTES)
    )


def read_report(request: HttpRequest) -> dict[str, Any]:
    """The JSON object in the body, refused over the size limit before it is read."""
    meta = request.META
    limit = report_max_bytes()
    try:
        length = declared_length(meta, limit)
        stream = body_stream(request, meta)
        body = read_capped(stream, length=length, limit=limit, sink=lambda _: None)
    except Rejected as exc:
        if exc.status == status.HTTP_413_REQUEST_ENTITY_TOO_LARGE:
            raise ReportRefused(exc.status, exc.message) from None
        raise ReportRefused(status.HTTP_400_BAD_REQUEST, exc.message) from None
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportRefused(400, f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ReportRefused(400, "the body must be a JSON object")
    return data


def json_answer(body: Any, status_code: int) -> HttpResponse:
    """``body`` as DRF's renderer writes it (same bytes), with ``status_code``."""
    return HttpResponse(
        JSONRenderer().render(body),
        status=status_code,
        content_type="application/json",
    )


def refusal(status_code: int, message: str) -> HttpResponse:
    """``{"detail": message}``; a 401 also says which credentials are taken."""
    answer = json_answer({"detail": message}, status_code)
    if status_code == status.HTTP_401_UNAUTHORIZED:
        answer["WWW-Authenticate"] = CHALLENGE
    return answer


def receive_report(request: HttpRequest, name: str) -> HttpResponse:
    """Store the report node ``name`` posts with its own node token; 204."""
    token = bearer_node_token(request)
    if token is None:
        return refusal(status.HTTP_401_UNAUTHORIZED, NODE_CREDENTIAL_WANTED)
    record = node_token_for(token)
    if record is None:
        return refusal(status.HTTP_401_UNAUTHORIZED, REFUSED_CREDENTIAL)
    if record.node.name != name:
        return refusal(status.HTTP_403_FORBIDDEN, IsOwnNode.message)
    try:
        data = read_report(request)
    except ReportRefused as exc:
        return refusal(exc.status, exc.message)
    report = quick_report(data)
    if report is None:
        serializer = StatusReportSerializer(data=data)
        if not serializer.is_valid():
            return json_answer(serializer.errors, status.HTTP_400_BAD_REQUEST)
        report = dict(serializer.data)
    ingest(record.node, report, timezone.now())
    stored = HttpResponse(status=status.HTTP_204_NO_CONTENT)
    del stored["Content-Type"]  # no body, so no type, as DRF answered
    return stored
