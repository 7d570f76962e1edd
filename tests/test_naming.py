"""TAP device names: at most 15 characters, deterministic, collisions detected."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodeagent.naming import TapNameCollision, assign_tap_names, tap_name

labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", fullmatch=True)


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        ("web", "fw-web"),
        ("a", "fw-a"),
        ("twelve-chars", "fw-twelve-chars"),
        (
            "thirteen-char",
            "fw-thir_" + __import__("hashlib").sha256(b"thirteen-char").hexdigest()[:7],
        ),
    ],
)
def test_tap_name_table(service: str, expected: str) -> None:
    assert tap_name(service) == expected


@given(labels)
def test_tap_name_always_fits_ifnamsiz_and_is_stable(service: str) -> None:
    name = tap_name(service)
    assert 1 <= len(name) <= 15
    assert name == tap_name(service)
    assert name.startswith("fw-")


@given(st.sets(labels, min_size=2, max_size=50))
def test_distinct_services_get_distinct_names(services: set[str]) -> None:
    names = assign_tap_names(sorted(services))
    assert len(set(names.values())) == len(services)


def test_hashed_names_never_equal_a_short_name() -> None:
    # a short name that looks like a hashed one cannot clash: labels have no '_'
    long_name = "abcd-efgh-ijkl-mnop"
    assert "_" in tap_name(long_name)
    assert "_" not in tap_name("abcd-1234567")


def test_collision_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("nodeagent.naming.tap_name", lambda service: "fw-same")
    with pytest.raises(
        TapNameCollision, match="services a and b both map to TAP device fw-same"
    ):
        assign_tap_names(["a", "b"])
