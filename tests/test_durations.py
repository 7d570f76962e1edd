"""Durations like 10s and 1m30s; anything else is an error, never zero."""

from __future__ import annotations

import pytest

from nodeagent.durations import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10s", 10),
        ("1m30s", 90),
        ("1h", 3600),
        ("2h5m7s", 7507),
        ("500ms", 0.5),
        ("1s500ms", 1.5),
        ("0s", 0),
    ],
)
def test_valid_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    ["", "10", "s", "10x", "1.5s", "-1s", "1s1m", "1m1m", " 1s", "1s ", "1 s", "1d"],
)
def test_invalid_durations_raise(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)
