"""The one-pass report check against the serializer it stands in for.

Whenever :func:`quick_report` accepts a body, the serializer must accept it
too and give the very same data, key order included; whatever the quick pass
leaves alone is the serializer's to refuse. Reports as agents send them must
take the quick pass, or ingest loses its speed.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.api.nodeserializers import StatusReportSerializer
from controlplane.api.quickreport import quick_report
from nodeagent.status import HEALTH_STATES, SERVICE_STATES
from tests.nodereportdata import report, service


def serializer_data(body: Any) -> dict[str, Any] | None:
    serializer = StatusReportSerializer(data=body)
    return dict(serializer.data) if serializer.is_valid() else None


def assert_same_as_serializer(body: dict[str, Any]) -> dict[str, Any] | None:
    quick = quick_report(copy.deepcopy(body))
    if quick is not None:
        expected = serializer_data(copy.deepcopy(body))
        assert expected is not None, "the quick pass took what the serializer refuses"
        # dumped, so that key order and int-against-float count too
        assert json.dumps(quick) == json.dumps(expected)
    return quick


def minimal_service() -> dict[str, Any]:
    return {"name": "web", "state": "stopped", "health": {"status": "unknown"}}


# Bodies agents send, and a few the serializer normalises: all take the quick pass.
ACCEPTED = {
    "as sent": report(),
    "no services": report(services=[]),
    "defaults left out": report(services=[minimal_service()]),
    "no optional top-level fields": {
        k: v for k, v in report().items() if k not in ("agent_version", "host")
    },
    "stale with a time": report(
        stale=True, stale_reason="store unreachable", stale_since="2026-02-05T11:00Z"
    ),
    "times with offsets and fractions": report(
        time="2026-02-05T14:00:00.250+02:00",
        services=[service(next_restart_at="2026-02-05T12:00:30.5Z")],
    ),
    "space around strings is trimmed": report(
        node=" general-purpose ", last_revision="  ", labels=[" gp "]
    ),
    "health status with spaces": report(
        services=[service(health={"status": " healthy "})]
    ),
    "every health status": report(
        services=[
            service(f"h{n}", health={"status": status})
            for n, status in enumerate(HEALTH_STATES)
        ]
    ),
    "unknown fields are dropped": report(extra=1, services=[service(other="x")]),
    "every service state": report(
        services=[
            service(f"s{n}", state=state) for n, state in enumerate(SERVICE_STATES)
        ]
    ),
}


@pytest.mark.parametrize("body", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_reports_as_agents_send_them_take_the_quick_pass(body: dict[str, Any]):
    assert assert_same_as_serializer(body) is not None


# Bodies the quick pass leaves to the serializer, and what the serializer says.
LEFT = [
    ({"phase": "dancing"}, "phase"),
    ({"time": "yesterday"}, "time"),
    ({"time": None}, "time"),
    ({"stale": "false"}, None),  # coerced by the serializer, not refused
    ({"stale_since": ""}, "stale_since"),
    ({"node": ""}, "node"),
    ({"node": "x" * 254}, "node"),
    ({"node": 7}, None),
    ({"last_revision": "a\x00b"}, "last_revision"),
    ({"last_revision": "\ud800"}, "last_revision"),
    ({"labels": "general-purpose"}, "labels"),
    ({"labels": ["a"] * 33}, "labels"),
    ({"labels": [""]}, "labels"),
    ({"revisions": {"gp": ""}}, "revisions"),
    ({"revisions": ["gp"]}, "revisions"),
    ({"services": {"web": {}}}, "services"),
    ({"services": [service(), service()]}, "services"),
    ({"services": [{"name": "web"}]}, "services"),
    ({"services": [service("Web")]}, "services"),
    ({"services": [service(state="sleeping")]}, "services"),
    ({"services": [service(pid=-1)]}, "services"),
    ({"services": [service(pid="12")]}, None),
    ({"services": [service(pid=None)]}, "services"),
    ({"services": [service(restarts=1.0)]}, None),
    ({"services": [service(health={"status": "fine"})]}, "services"),
    ({"services": [service(health={"status": "healthy", "failures": -2})]}, "services"),
    ({"services": [service(guest_ip="1" * 65)]}, "services"),
    ({"services": [service(next_restart_at="soon")]}, "services"),
    ({"host": {"disks": ["sda"]}}, "host"),
    ({"host": {"swap": None}}, "host"),
    ({"host": {f"f{n}": n for n in range(65)}}, "host"),
    ({"host": {"k" * 101: 1}}, "host"),
    ({"agent_version": "v" * 101}, "agent_version"),
]


@pytest.mark.parametrize(("change", "field"), LEFT)
def test_odd_bodies_are_left_to_the_serializer(change: dict[str, Any], field: str):
    body = report() | change

    assert quick_report(copy.deepcopy(body)) is None
    serializer = StatusReportSerializer(data=body)
    if field is None:
        assert serializer.is_valid(), serializer.errors
    else:
        assert not serializer.is_valid()
        assert field in serializer.errors


@pytest.mark.parametrize("missing", [*report().keys()][:10])
def test_a_missing_required_field_is_left_to_the_serializer(missing: str):
    body = {k: v for k, v in report().items() if k != missing}

    assert quick_report(body) is None
    assert not StatusReportSerializer(data=body).is_valid()


# -- random bodies: wherever the quick pass says yes, the serializer agrees

ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [
            "",
            "  ",
            " web ",
            "web",
            "Web",
            "running",
            "healthy",
            "unknown",
            "sleeping",
            "a\x00",
            "\ud800",
            "x" * 254,
            "2026-02-05T12:00:00Z",
            "2026-02-05T12:00:00+05:30",
            "2026-02-05 12:00",
            "2026-02-05",
            "2026-13-05T12:00:00Z",
            "12",
            "true",
        ]
    ),
    st.text(max_size=8),
    st.lists(st.sampled_from(["gp", "", " a"]), max_size=3),
    st.dictionaries(st.sampled_from(["gp", "status", "k"]), st.none(), max_size=2),
)
TOP = [*report().keys()]
SERVICE_KEYS = [*service().keys()]
HEALTH_KEYS = [*service()["health"].keys()]


@st.composite
def mutated_reports(draw: st.DrawFn) -> dict[str, Any]:
    body = report()
    # taken first: a change at the top may detach them, which is harmless
    places: dict[str, tuple[dict[str, Any], list[str]]] = {
        "top": (body, TOP),
        "service": (body["services"][1], SERVICE_KEYS),
        "health": (body["services"][2]["health"], HEALTH_KEYS),
        "host": (body["host"], ["kernel", "cpus", "new"]),
        "revisions": (body["revisions"], ["general-purpose", "new"]),
    }
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        target, keys = places[draw(st.sampled_from(sorted(places)))]
        key = draw(st.sampled_from(keys))
        if draw(st.booleans()) and draw(st.booleans()):
            target.pop(key, None)
        else:
            target[key] = draw(ODD_VALUES)
    return body


@settings(max_examples=400, deadline=None)
@given(mutated_reports())
def test_the_quick_pass_never_disagrees_with_the_serializer(body: dict[str, Any]):
    assert_same_as_serializer(body)
