"""The fields of a GitHub ``push`` payload that a run needs, checked.

GitHub sends the payload as JSON, or as the ``payload`` field of a form when the
webhook's content type is ``application/x-www-form-urlencoded`` (GitHub's
default). Errors name the field, so the sender sees what was wrong.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

ZERO_SHA = "0" * 40
FORM_TYPE = "application/x-www-form-urlencoded"

_SHA = re.compile(r"[0-9a-fA-F]{40}")
# A push form has one field; anything with many more is not from GitHub.
_MAX_FORM_FIELDS = 20


class PayloadError(ValueError):
    """The payload is not a usable push; the message says which field and why."""


@dataclass(frozen=True)
class Push:
    """What a push event says: the ref, the new commit and the repository."""

    ref: str
    after: str  # lowercase commit SHA; all zeros when the ref was deleted
    full_name: str  # owner/name
    deleted: bool


def parse_push(body: bytes, content_type: str) -> Push:
    """The push in ``body``, or :class:`PayloadError` naming the bad field."""
    document = _decode(body, content_type)
    if not isinstance(document, dict):
        raise PayloadError("payload must be a JSON object")
    ref = _string(document, "ref")
    after = _string(document, "after")
    if _SHA.fullmatch(after) is None:
        raise PayloadError("field after: must be a 40-character hex commit SHA")
    repository = document.get("repository")
    if repository is None:
        raise PayloadError("field repository: missing")
    if not isinstance(repository, dict):
        raise PayloadError("field repository: must be an object")
    full_name = _string(repository, "full_name", "repository.")
    after = after.lower()
    return Push(
        ref=ref,
        after=after,
        full_name=full_name,
        deleted=document.get("deleted") is True or after == ZERO_SHA,
    )


def _decode(body: bytes, content_type: str) -> Any:
    if content_type.split(";", 1)[0].strip().lower() == FORM_TYPE:
        body = _form_payload(body)
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        # exc.msg is json's fixed wording; the document itself is not quoted.
        raise PayloadError(
            f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except (ValueError, RecursionError):
        # Not UTF-8/16/32, a number too long to convert, or nested too deep.
        raise PayloadError("malformed JSON: cannot be decoded") from None


def _form_payload(body: bytes) -> bytes:
    try:
        fields = parse_qs(
            body.decode("ascii"),
            keep_blank_values=True,
            errors="strict",
            max_num_fields=_MAX_FORM_FIELDS,
        )
    except (UnicodeDecodeError, ValueError):
        raise PayloadError("malformed form body") from None
    values = fields.get("payload")
    if not values:
        raise PayloadError("form field payload: missing")
    return values[0].encode("utf-8")


def _string(document: dict[str, Any], key: str, prefix: str = "") -> str:
    if key not in document:
        raise PayloadError(f"field {prefix}{key}: missing")
    value = document[key]
    if not isinstance(value, str):
        raise PayloadError(f"field {prefix}{key}: must be a string")
    if not value:
        raise PayloadError(f"field {prefix}{key}: must not be empty")
    return value
