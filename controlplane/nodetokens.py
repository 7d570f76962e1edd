"""Node credentials: one-time enrollment tokens and the node tokens they buy.

Only the SHA-256 of a token is stored; the token itself is returned once, when
it is made. A token is found by its hash, so no stored secret is ever compared
byte by byte with what a client sent.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from controlplane.models import EnrollmentToken, Node, NodeToken

log = logging.getLogger(__name__)

ENROLLMENT_PREFIX = "fwe_"
NODE_PREFIX = "fwn_"
# Writing last_used_at on every report would make each one a second UPDATE.
LAST_USED_PRECISION = timedelta(minutes=1)


class EnrollmentRefused(Exception):
    """An enrollment token is unknown, used, expired or of another node.

    The message is the same in every case, so a caller learns nothing from it.
    """

    def __init__(self) -> None:
        super().__init__("enrollment token is invalid, expired or already used")


def token_sha256(token: str) -> str:
    """The hex SHA-256 a token is stored and looked up by."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(prefix: str) -> str:
    """A fresh random token with its kind as prefix."""
    return prefix + secrets.token_urlsafe(32)


def issue_enrollment_token(node: Node) -> tuple[str, EnrollmentToken]:
    """Make a one-time enrollment token for ``node``; the token is shown once."""
    token = new_token(ENROLLMENT_PREFIX)
    record = EnrollmentToken.objects.create(node=node, token_sha256=token_sha256(token))
    log.info("enrollment token issued node=%s id=%s", node.name, record.pk)
    return token, record


def issue_node_token(node: Node) -> str:
    """Make a node token for ``node``; the token is shown once."""
    token = new_token(NODE_PREFIX)
    record = NodeToken.objects.create(node=node, token_sha256=token_sha256(token))
    log.info("node token issued node=%s id=%s", node.name, record.pk)
    return token


def enroll(node_name: str, enrollment_token: str) -> tuple[Node, str]:
    """Consume ``enrollment_token`` for the node named so; return a node token.

    The token is marked used by a conditional UPDATE, so of two concurrent
    enrollments with one token only one succeeds.
    """
    now = timezone.now()
    with transaction.atomic():
        claimed = EnrollmentToken.objects.filter(
            token_sha256=token_sha256(enrollment_token),
            node__name=node_name,
            used_at__isnull=True,
            expires_at__gt=now,
        ).update(used_at=now)
        if claimed != 1:
            log.warning("enrollment refused node=%r", node_name[:63])
            raise EnrollmentRefused()
        node = Node.objects.get(name=node_name)
        token = issue_node_token(node)
    log.info("node enrolled node=%s", node_name)
    return node, token


def revoke_node_tokens(node: Node) -> int:
    """Revoke every live token of ``node``; returns how many were revoked."""
    count = NodeToken.objects.filter(node=node, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    log.info("node tokens revoked node=%s count=%s", node.name, count)
    return count


def node_token_for(token: str, now: datetime | None = None) -> NodeToken | None:
    """The live node token matching ``token``, its use recorded; else ``None``."""
    if not token.startswith(NODE_PREFIX):
        return None
    record = (
        NodeToken.objects.select_related("node")
        .filter(token_sha256=token_sha256(token), revoked_at__isnull=True)
        .first()
    )
    if record is None:
        return None
    now = now or timezone.now()
    last = record.last_used_at
    if last is None or now - last >= LAST_USED_PRECISION:
        NodeToken.objects.filter(pk=record.pk).update(last_used_at=now)
        record.last_used_at = now
    return record
