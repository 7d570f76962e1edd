"""The dashboard's pure helpers: durations, redacted URLs, grouping, diff lines."""

from __future__ import annotations

from datetime import timedelta

import pytest

from controlplane.dashboard.diffs import MAX_DIFF_LINES, compare_outputs, diff_lines
from controlplane.dashboard.present import duration_text, redact_url
from controlplane.dashboard.problems import group_problems
from controlplane.models import NodeConfigOutput


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, ""),
        (timedelta(0), "0.00 s"),
        (timedelta(milliseconds=420), "0.42 s"),
        (timedelta(seconds=12, milliseconds=340), "12.3 s"),
        (timedelta(seconds=59, milliseconds=940), "59.9 s"),
        (timedelta(minutes=4, seconds=5), "4 min 05 s"),
        (timedelta(hours=2, minutes=3, seconds=59), "2 h 03 min"),
        (timedelta(seconds=-3), "0.00 s"),  # clocks of two machines disagree
    ],
)
def test_durations_read_naturally(value: timedelta | None, text: str) -> None:
    assert duration_text(value) == text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://github.com/acme/ops.git", "https://github.com/acme/ops.git"),
        (
            "https://x:tok@github.com/acme/ops.git",
            "https://***@github.com/acme/ops.git",
        ),
        ("https://tok@github.com:8443/a.git", "https://***@github.com:8443/a.git"),
        ("git@github.com:acme/ops.git", "git@github.com:acme/ops.git"),
        ("file:///srv/git/ops", "file:///srv/git/ops"),
        ("https://u:p@[::1/x", "(unparsable URL hidden)"),
    ],
)
def test_clone_urls_are_shown_without_credentials(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_problems_without_file_or_service_come_first() -> None:
    groups = group_problems(
        [
            {"file": "b.yaml", "service": "web", "message": "one"},
            {"file": "", "service": "", "message": "clone failed"},
            {"file": "b.yaml", "service": "", "message": "bad YAML"},
        ]
    )
    assert [g.file for g in groups] == ["", "b.yaml"]
    assert [s.service for s in groups[1].services] == ["", "web"]
    assert groups[1].count == 2


def test_diff_lines_are_classified() -> None:
    lines = diff_lines("a\nb\nc\n", "a\nB\nc\n", "old", "new")
    assert [(line.kind, line.text) for line in lines] == [
        ("file", "--- old"),
        ("file", "+++ new"),
        ("hunk", "@@ -1,3 +1,3 @@"),
        ("context", " a"),
        ("removed", "-b"),
        ("added", "+B"),
        ("context", " c"),
    ]


def test_removed_and_added_document_separators_are_changes_not_headers() -> None:
    lines = diff_lines("---\nx: 1\n", "++ y\nx: 1\n", "old", "new")
    assert [(line.kind, line.text) for line in lines][3:] == [
        ("removed", "----"),
        ("added", "+++ y"),
        ("context", " x: 1"),
    ]


def test_huge_diffs_are_cut() -> None:
    new = "\n".join(f"line {i}" for i in range(MAX_DIFF_LINES + 10))
    (change,) = compare_outputs(
        [NodeConfigOutput(node_type="big", content=new, sha256="x")], []
    )
    assert len(change.lines) == MAX_DIFF_LINES
    assert change.added == MAX_DIFF_LINES + 10
    assert change.truncated == 13  # two file headers and a hunk header count too
