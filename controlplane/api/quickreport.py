"""A status report checked in one flat pass, for the reports agents really send.

:class:`~controlplane.api.nodeserializers.StatusReportSerializer` is the
contract. Walking its nested fields costs more CPU than the rest of an ingest
together, and every node sends a report every tick. :func:`quick_report` takes
only reports whose values already have the plain JSON type the contract asks
for and returns exactly what the serializer's ``data`` would be, in the same
key order. Anything else (a wrong type, a value the serializer would coerce or
refuse, a repeated service name) gives ``None``, and the caller runs the
serializer; so every refusal, with its field paths and messages, is the
serializer's own. ``tests/test_quickreport.py`` holds the two to that.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from datetime import tzinfo
from typing import Any

from rest_framework import serializers

from controlplane.api.nodeserializers import MAX_HOST_FACTS, MAX_LABELS, MAX_SERVICES
from nodeagent.spec.fields import DNS_LABEL
from nodeagent.status import HEALTH_STATES, PHASES, SERVICE_STATES

# CharField refuses NUL and lone surrogates (json.loads makes them from "\ud800").
_FORBIDDEN = re.compile("[\x00\ud800-\udfff]")
# The service name's RegexField pattern, searched as its validator does.
_SERVICE_NAME = re.compile(rf"^(?:{DNS_LABEL.pattern})\Z")
_PHASES = frozenset(PHASES)
_SERVICE_STATES = frozenset(SERVICE_STATES)
_HEALTH_STATES = frozenset(HEALTH_STATES)
# Parsing and formatting a time is left to DRF's own field: same formats, same
# time zone handling, same output.
_DATETIME = serializers.DateTimeField()


class _NotPlain(Exception):
    """A value this pass leaves to the serializer."""


def _required(data: Mapping[str, Any], key: str) -> Any:
    if key not in data:
        raise _NotPlain(key)
    return data[key]


def _text(value: Any, max_length: int | None, *, blank: bool = False) -> str:
    """A CharField's value: trimmed, blank only if allowed, no NUL or surrogate."""
    if type(value) is not str:
        raise _NotPlain(value)
    text = value.strip()
    if not text:
        if blank:
            return ""
        raise _NotPlain(value)
    too_long = max_length is not None and len(text) > max_length
    if too_long or _FORBIDDEN.search(text):
        raise _NotPlain(value)
    return text


def _count(value: Any) -> int:
    """An IntegerField with ``min_value=0``, given as a JSON integer."""
    if type(value) is not int or value < 0:
        raise _NotPlain(value)
    return value


def _choice(value: Any, choices: frozenset[str]) -> str:
    if type(value) is not str or value not in choices:
        raise _NotPlain(value)
    return value


def _time(value: Any, *, null: bool = False) -> str | None:
    """A DateTimeField's output for an ISO 8601 string (or null where allowed)."""
    if value is None and null:
        return None
    if type(value) is not str:
        raise _NotPlain(value)
    shown = _shown_time(value, _DATETIME.default_timezone())
    if shown is None:
        raise _NotPlain(value)
    return shown


@functools.lru_cache(maxsize=1024)
def _shown_time(value: str, zone: tzinfo | None) -> str | None:
    # A report repeats a few times (its own, each health check's) and agents
    # send the same ones tick after tick: parsed once per time zone, not per
    # service. ``zone`` is the one the field converts to, so it is the key.
    try:
        shown: str = _DATETIME.to_representation(_DATETIME.to_internal_value(value))
    except serializers.ValidationError:
        return None
    return shown


def _health(value: Any) -> dict[str, Any]:
    if type(value) is not dict:
        raise _NotPlain(value)
    status = _text(_required(value, "status"), None)
    if status not in _HEALTH_STATES:
        raise _NotPlain(status)
    return {
        "status": status,
        "last_checked": _time(value.get("last_checked"), null=True),
        "failures": _count(value.get("failures", 0)),
        "last_error": _text(value.get("last_error", ""), 2000, blank=True),
    }


def _service(value: Any) -> dict[str, Any]:
    if type(value) is not dict:
        raise _NotPlain(value)
    name = _text(_required(value, "name"), 63)
    if _SERVICE_NAME.search(name) is None:
        raise _NotPlain(name)
    return {
        "name": name,
        "state": _choice(_required(value, "state"), _SERVICE_STATES),
        "pid": _count(value.get("pid", 0)),
        "health": _health(_required(value, "health")),
        "guest_ip": _text(value.get("guest_ip", ""), 64, blank=True),
        "restarts": _count(value.get("restarts", 0)),
        "last_error": _text(value.get("last_error", ""), 2000, blank=True),
        "next_restart_at": _time(value.get("next_restart_at"), null=True),
    }


def _services(value: Any) -> list[dict[str, Any]]:
    if type(value) is not list or len(value) > MAX_SERVICES:
        raise _NotPlain(value)
    services = [_service(item) for item in value]
    if len({service["name"] for service in services}) != len(services):
        raise _NotPlain(value)
    return services


def _labels(value: Any) -> list[str]:
    if type(value) is not list or len(value) > MAX_LABELS:
        raise _NotPlain(value)
    return [_text(label, 253) for label in value]


def _revisions(value: Any) -> dict[str, str]:
    if type(value) is not dict:
        raise _NotPlain(value)
    return {key: _text(revision, 200) for key, revision in value.items()}


def _fact(value: Any) -> str | int | float:
    # null is refused by the serializer's JSONField child: left to it.
    if type(value) in (str, int, bool):
        fact: str | int = value
        return fact
    if type(value) is float and math.isfinite(value):
        number: float = value
        return number
    raise _NotPlain(value)


def _host(value: Any) -> dict[str, Any]:
    if type(value) is not dict or len(value) > MAX_HOST_FACTS:
        raise _NotPlain(value)
    if any(len(key) > 100 for key in value):
        raise _NotPlain(value)
    return {key: _fact(fact) for key, fact in value.items()}


def quick_report(data: Mapping[str, Any]) -> dict[str, Any] | None:
    """The serializer's ``data`` for ``data``, or ``None``: ask the serializer."""
    try:
        report = {
            "node": _text(_required(data, "node"), 253),
            "last_revision": _text(_required(data, "last_revision"), 2000, blank=True),
            "services": _services(_required(data, "services")),
            "phase": _choice(_required(data, "phase"), _PHASES),
            "labels": _labels(_required(data, "labels")),
            "revisions": _revisions(_required(data, "revisions")),
            "stale": _required(data, "stale"),
            "stale_reason": _text(_required(data, "stale_reason"), 2000, blank=True),
            "stale_since": _time(_required(data, "stale_since"), null=True),
            "time": _time(_required(data, "time")),
        }
        if type(report["stale"]) is not bool:
            return None
        if "agent_version" in data:
            report["agent_version"] = _text(data["agent_version"], 100, blank=True)
        if "host" in data:
            report["host"] = _host(data["host"])
    except _NotPlain:
        return None
    return report
