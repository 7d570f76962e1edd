"""Node credentials: one-time enrollment tokens and the node tokens they buy.

Only the SHA-256 of a token is stored; the token itself is returned once, when
it is made. A token is found by its hash, so no stored secret is ever compared
byte by byte with what a client sent.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import secrets
from datetime import datetime, timedelta
from typing import Any

from django.db import connections, router, transaction
from django.db.models import QuerySet
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
    """Make a one-time enrollment token for ``node``; the token is shown once.

    The node's unused enrollment tokens are cancelled with it, so a node has at
    most one that works: the last one shown. A token lost before it was copied,
    or shown again by a re-sent form, then leaves nothing usable behind.
    """
    token = new_token(ENROLLMENT_PREFIX)
    with transaction.atomic():
        superseded = _cancel_pending(node)
        record = EnrollmentToken.objects.create(
            node=node, token_sha256=token_sha256(token)
        )
    log.info(
        "enrollment token issued node=%s id=%s superseded=%s",
        node.name,
        record.pk,
        superseded,
    )
    return token, record


def pending_enrollment(node_name: str) -> EnrollmentToken | None:
    """The enrollment token of the node named so that still works, if any."""
    return _pending(node__name=node_name).first()


def cancel_enrollment_tokens(node: Node) -> int:
    """Make the node's unused enrollment tokens stop working; returns how many."""
    count = _cancel_pending(node)
    log.info("enrollment tokens cancelled node=%s count=%s", node.name, count)
    return count


def _pending(**node: Any) -> QuerySet[EnrollmentToken]:
    """Unused, unexpired enrollment tokens of the node the keywords select."""
    return EnrollmentToken.objects.filter(
        used_at__isnull=True, expires_at__gt=timezone.now(), **node
    )


def _cancel_pending(node: Node) -> int:
    """Expire the node's unused tokens now: a cancelled token is an expired one."""
    return _pending(node=node).update(expires_at=timezone.now())


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
    """The live node token matching ``token``, its use recorded; else ``None``.

    One query finds the token and the node fields an ingest and the node
    permissions read (id, name, states digest); the node's other fields, its
    large last report among them, load only if something reads them. Every
    status report starts here, which is why this is SQL rather than a queryset:
    compiling the join cost more CPU than running it.
    """
    if not token.startswith(NODE_PREFIX):
        return None
    now = now or timezone.now()
    row = _live_token_row(token_sha256(token), now - LAST_USED_PRECISION)
    if row is None:
        return None
    token_id, node_id, name, digest, used_long_ago = row
    db = router.db_for_read(NodeToken)
    record = NodeToken.from_db(db, ["id", "node_id"], [token_id, node_id])
    record.node = Node.from_db(
        db, ["id", "name", "states_digest"], [node_id, name, digest]
    )
    if used_long_ago:
        NodeToken.objects.filter(pk=token_id).update(last_used_at=now)
        record.last_used_at = now
    return record


# A live token, its node's fields an ingest reads, and whether the token's
# last use is older than the first parameter (then it is recorded again).
_LIVE_CREDENTIAL_SQL = """
SELECT t.{token_id}, n.{node_id}, n.{name}, n.{states_digest},
       CASE WHEN t.{last_used_at} IS NULL OR t.{last_used_at} <= %s
            THEN 1 ELSE 0 END
  FROM {token_table} t JOIN {node_table} n ON n.{node_id} = t.{token_node}
 WHERE t.{token_sha256} = %s AND t.{revoked_at} IS NULL
"""


@functools.cache
def _live_token_sql(alias: str) -> str:
    """The query with the models' table and column names, quoted for ``alias``."""
    quote = connections[alias].ops.quote_name
    token, node = NodeToken._meta, Node._meta
    names = {
        "token_table": token.db_table,
        "node_table": node.db_table,
        "token_id": token.pk.column,
        "token_node": token.get_field("node").column,
        "last_used_at": token.get_field("last_used_at").column,
        "token_sha256": token.get_field("token_sha256").column,
        "revoked_at": token.get_field("revoked_at").column,
        "node_id": node.pk.column,
        "name": node.get_field("name").column,
        "states_digest": node.get_field("states_digest").column,
    }
    return _LIVE_CREDENTIAL_SQL.format_map({k: quote(v) for k, v in names.items()})


def _live_token_row(
    sha256: str, used_before: datetime
) -> tuple[int, int, str, str, int] | None:
    """Token id, node id, name, states digest, and whether its use is to record."""
    alias = router.db_for_read(NodeToken)
    conn = connections[alias]
    with conn.cursor() as cursor:
        cursor.execute(
            _live_token_sql(alias),
            [conn.ops.adapt_datetimefield_value(used_before), sha256],
        )
        row = cursor.fetchone()
    return None if row is None else tuple(row)
