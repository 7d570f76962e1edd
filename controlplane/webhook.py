"""The GitHub webhook: a signed push to a tracked branch queues an enrichment run.

The checks run in this order, each before the next one costs anything:

1. ``POST`` only (405).
2. A ``Content-Length`` over ``FIREWORK_WEBHOOK_MAX_BYTES`` is refused before a
   byte of the body is read (413). A body without one (chunked) is read with the
   same cap and refused as soon as it goes over (413).
3. ``X-Hub-Signature-256`` must be present and well formed (401).
4. The body is read in chunks, its HMAC-SHA256 computed as it comes in, and
   compared in constant time (401 when no configured secret matches).
5. ``ping`` answers 200 ``pong``; events other than ``push`` are ignored (202).
6. The payload is parsed and its fields checked (400 naming the field).
7. ``repository.full_name`` must be a repository the matching secret belongs
   to (404). An inactive repository, a ref other than its branch, or a deleted
   branch is ignored (202).
8. A delivery id accepted before answers 200 ``duplicate``; otherwise the run
   is queued (202) and a Celery worker does the work. If the broker does not
   take it, the answer is 503 and the delivery is not counted as accepted, so
   GitHub's redelivery tries again.

Which repository is meant? The payload names it, but must not be parsed before
the signature is checked, and checking needs that repository's secret. So the
body is checked against the secret of every repository that has one (each
distinct secret once, while the body is read). The matching secret gives the
repositories that may be meant, and the payload's ``repository.full_name``
picks among them: one GitHub repository may be configured several times, say
once per branch, all with the same secret. A repository without a webhook
secret never accepts a webhook.

Every request is recorded as a :class:`WebhookDelivery`, without its body or
its signature.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from controlplane import metrics
from controlplane.envvars import EnvError
from controlplane.models import ConfigRepository, Revision, WebhookDelivery
from controlplane.runs import request_run
from controlplane.webhook_body import (
    Rejected,
    SignatureCheck,
    body_stream,
    declared_length,
    parse_signature,
    read_capped,
)
from controlplane.webhook_payload import PayloadError, Push, parse_push

log = logging.getLogger(__name__)

SIGNATURE_MISMATCH = "X-Hub-Signature-256 does not match any configured repository"

_DELIVERY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}")
_NOT_VISIBLE = re.compile(r"[^\x21-\x7e]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_OUTCOME_MAX = 300


@dataclass
class _Request:
    """What the delivery record keeps of a request, cleaned for the database."""

    event: str
    delivery_id: str
    remote_addr: str | None
    body_bytes: int = 0

    @classmethod
    def of(cls, request: HttpRequest) -> _Request:
        meta = request.META
        return cls(
            event=_header(meta, "HTTP_X_GITHUB_EVENT", 64),
            delivery_id=_header(meta, "HTTP_X_GITHUB_DELIVERY", 100),
            remote_addr=_ip_address(meta.get("REMOTE_ADDR")),
        )


@dataclass
class _Reply:
    """The answer to a request and what its delivery record says."""

    status: int
    body: dict[str, Any]
    outcome: str
    repository: ConfigRepository | None = None
    revision_id: int | None = None
    recorded: bool = False  # an accepted delivery is recorded with its runs
    allow: list[str] = field(default_factory=list)


class _Stop(Exception):
    """Ends the checks early with ``reply``."""

    def __init__(self, reply: _Reply) -> None:
        super().__init__(reply.outcome)
        self.reply = reply


@csrf_exempt
def github_webhook(request: HttpRequest) -> JsonResponse:
    """Receive one GitHub webhook delivery; the module docstring lists the checks."""
    info = _Request.of(request)
    try:
        reply = _handle(request, info)
    except Rejected as exc:
        info.body_bytes = max(info.body_bytes, exc.bytes_read)
        reply = _Reply(exc.status, {"error": exc.message}, exc.message)
        if exc.status == 405:
            reply.allow = ["POST"]
    except _Stop as stop:
        reply = stop.reply
    if not reply.recorded:
        _record(info, reply, accepted=False)
    log.info(
        "webhook event=%s delivery=%s status=%d repository=%s outcome=%s",
        info.event or "-",
        info.delivery_id or "-",
        reply.status,
        reply.repository.name if reply.repository else "-",
        _printable(reply.outcome),
    )
    metrics.webhook_delivered(reply.status, reply.body)
    response = JsonResponse(reply.body, status=reply.status)
    if reply.allow:
        response["Allow"] = ", ".join(reply.allow)
    return response


def _handle(request: HttpRequest, info: _Request) -> _Reply:
    """Size, signature, then what the signed request asks for."""
    if request.method != "POST":
        raise Rejected(405, "method not allowed: GitHub sends POST")
    limit: int = settings.FIREWORK_WEBHOOK_MAX_BYTES
    length = declared_length(request.META, limit)
    signature = parse_signature(request.META.get("HTTP_X_HUB_SIGNATURE_256"))
    by_secret = _repositories_by_secret()
    if not by_secret:
        raise Rejected(401, SIGNATURE_MISMATCH)
    check = SignatureCheck(by_secret)
    stream = body_stream(request, request.META)
    body = read_capped(stream, length=length, limit=limit, sink=check.update)
    info.body_bytes = len(body)
    secret = check.matching(signature)
    if secret is None:
        raise Rejected(401, SIGNATURE_MISMATCH)
    return _signed(request, info, body, by_secret[secret])


def _repositories_by_secret() -> dict[bytes, list[ConfigRepository]]:
    """Every repository that has a webhook secret, grouped by that secret."""
    by_secret: dict[bytes, list[ConfigRepository]] = {}
    for repository in ConfigRepository.objects.exclude(webhook_secret_env=""):
        try:
            secret = repository.webhook_secret()
        except EnvError as exc:  # names the variable, never the secret
            log.warning(
                "webhook secret unusable repository=%s error=%s", repository.name, exc
            )
            continue
        if secret:
            by_secret.setdefault(secret.encode(), []).append(repository)
    return by_secret


def _signed(
    request: HttpRequest,
    info: _Request,
    body: bytes,
    repositories: list[ConfigRepository],
) -> _Reply:
    """The checks after the signature: event, payload, repository, branch."""
    known = repositories[0] if len(repositories) == 1 else None
    event = request.META.get("HTTP_X_GITHUB_EVENT", "")
    if not event:
        raise _error(400, "missing X-GitHub-Event header", known)
    if event == "ping":
        return _Reply(200, {"status": "pong"}, "pong", repository=known)
    if event != "push":
        raise _ignored(f"event {info.event} is not handled", known)
    delivery_id = _delivery_id(request.META.get("HTTP_X_GITHUB_DELIVERY"), known)
    try:
        push = parse_push(body, request.content_type or "")
    except PayloadError as exc:
        raise _error(400, str(exc), known) from None
    targets = _targets(repositories, push, known)
    return _queue(info, targets, push, delivery_id)


def _delivery_id(value: object, known: ConfigRepository | None) -> str:
    if not value:
        raise _error(400, "missing X-GitHub-Delivery header", known)
    if not isinstance(value, str) or _DELIVERY_ID.fullmatch(value) is None:
        raise _error(
            400,
            "X-GitHub-Delivery must be 1 to 100 letters, digits, '.', '_', ':' or '-'",
            known,
        )
    return value


def _targets(
    repositories: list[ConfigRepository], push: Push, known: ConfigRepository | None
) -> list[ConfigRepository]:
    """The repositories this push runs, or a reply saying why there are none."""
    wanted = push.full_name.casefold()
    named = [r for r in repositories if r.github_full_name.casefold() == wanted]
    if not named:
        raise _error(404, f"repository {push.full_name} is not configured", known)
    active = [r for r in named if r.active]
    if not active:
        raise _ignored(f"repository {named[0].name} is inactive", named[0])
    tracked = [r for r in active if push.ref == f"refs/heads/{r.branch}"]
    if not tracked:
        raise _ignored(f"{push.ref} is not a tracked branch", active[0])
    if push.deleted:
        raise _ignored(f"{push.ref} was deleted", tracked[0])
    return tracked


def _queue(
    info: _Request, targets: list[ConfigRepository], push: Push, delivery_id: str
) -> _Reply:
    """Record the accepted delivery and request its runs, all or nothing.

    The unique constraint on accepted delivery ids decides between two requests
    with the same id, even when they arrive at once: the second one's insert
    fails and it answers ``duplicate``.
    """
    reply = _Reply(202, {}, "", repository=targets[0], recorded=True)
    try:
        with transaction.atomic():
            delivery = _record(info, reply, accepted=True)
            revisions = [
                request_run(
                    repository,
                    trigger=Revision.Trigger.WEBHOOK,
                    ref=repository.branch,
                    commit_sha=push.after,
                    delivery_id=delivery_id,
                )
                for repository in targets
            ]
            reply.revision_id = revisions[0].pk
            reply.outcome = f"queued revision {revisions[0].pk} for {push.after}"
            delivery.revision_id = reply.revision_id
            delivery.outcome = reply.outcome
            delivery.save(update_fields=["revision", "outcome"])
    except IntegrityError:
        earlier = _accepted(delivery_id)
        if earlier is None:
            raise
        return _duplicate(earlier, targets[0])
    # The commit handed the runs to Celery (request_run schedules on commit).
    ids = [revision.pk for revision in revisions]
    unscheduled = _unscheduled(ids)
    if unscheduled is not None:
        return _not_queued(delivery, unscheduled)
    reply.body = {"status": "queued", "revision": ids[0], "revisions": ids}
    return reply


def _accepted(delivery_id: str) -> WebhookDelivery | None:
    return WebhookDelivery.objects.filter(
        delivery_id=delivery_id, accepted=True
    ).first()


def _duplicate(earlier: WebhookDelivery, repository: ConfigRepository) -> _Reply:
    return _Reply(
        200,
        {"status": "duplicate", "revision": earlier.revision_id},
        f"duplicate of the delivery accepted at {earlier.received_at.isoformat()}",
        repository=repository,
        revision_id=earlier.revision_id,
    )


def _unscheduled(revision_ids: list[int]) -> Revision | None:
    """A revision that failed before it ever started: Celery never took it.

    request_run records a broker that is down (or a run that could not even be
    started in process) as a failed revision without a start time.
    """
    return Revision.objects.filter(
        pk__in=revision_ids, status=Revision.Status.FAILED, started_at__isnull=True
    ).first()


def _not_queued(delivery: WebhookDelivery, revision: Revision) -> _Reply:
    """Answer 503 and un-accept the delivery, so GitHub's redelivery runs it."""
    outcome = _printable(f"not queued: {revision.failure}")[:_OUTCOME_MAX]
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        accepted=False, status_code=503, outcome=outcome
    )
    log.error(
        "webhook run not queued repository=%s revision=%s",
        delivery.repository,
        revision.pk,
    )
    message = "the run could not be queued; redeliver later"
    return _Reply(
        503, {"error": message}, outcome, delivery.repository, revision.pk, True
    )


def _record(info: _Request, reply: _Reply, *, accepted: bool) -> WebhookDelivery:
    return WebhookDelivery.objects.create(
        delivery_id=info.delivery_id,
        event=info.event,
        repository=reply.repository,
        status_code=reply.status,
        accepted=accepted,
        outcome=_printable(reply.outcome)[:_OUTCOME_MAX],
        revision_id=reply.revision_id,
        body_bytes=info.body_bytes,
        remote_addr=info.remote_addr,
    )


def _error(status: int, message: str, repository: ConfigRepository | None) -> _Stop:
    return _Stop(_Reply(status, {"error": message}, message, repository))


def _ignored(reason: str, repository: ConfigRepository | None) -> _Stop:
    body = {"status": "ignored", "reason": reason}
    return _Stop(_Reply(202, body, f"ignored: {reason}", repository))


def _header(meta: dict[str, Any], name: str, limit: int) -> str:
    """A header for the record: visible ASCII only, cut to the column's size."""
    value = meta.get(name, "")
    return _NOT_VISIBLE.sub("", value)[:limit] if isinstance(value, str) else ""


def _printable(text: str) -> str:
    """``text`` safe for one log line and any database: no controls, no surrogates."""
    text = text.encode("utf-8", "replace").decode("utf-8")
    return _CONTROL.sub("?", text)


def _ip_address(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        # The zone of a link-local IPv6 address is no part of an inet column.
        return str(ipaddress.ip_address(value.partition("%")[0]))
    except ValueError:
        return None
