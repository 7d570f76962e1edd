"""How the dashboard words things: durations, commits, URLs, run rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit, urlunsplit

from controlplane.models import Revision

SHORT_SHA = 12
_MINUTE = 60
_HOUR = 60 * _MINUTE


def duration_text(value: timedelta | None) -> str:
    """``0.42 s``, ``12.3 s``, ``4 min 05 s``, ``2 h 03 min``; ``""`` if unknown."""
    if value is None:
        return ""
    seconds = max(value.total_seconds(), 0.0)
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < _MINUTE:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < _HOUR:
        return f"{whole // _MINUTE} min {whole % _MINUTE:02d} s"
    return f"{whole // _HOUR} h {whole % _HOUR // _MINUTE:02d} min"


def short_sha(sha: str) -> str:
    """The abbreviated commit SHA shown in lists (the full one is on the detail)."""
    return sha[:SHORT_SHA]


def redact_url(url: str) -> str:
    """``url`` without a password or token in its user info.

    Clone URLs should name their token by environment variable, but one pasted
    with ``https://user:token@host/`` in it must still not reach a page.
    """
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
        port = parts.port
    except ValueError:
        return "(unparsable URL hidden)"
    if "@" not in parts.netloc:
        return url
    host = hostname or ""
    if port is not None:
        host = f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


@dataclass(frozen=True)
class RunRow:
    """A revision as one line of a run list."""

    revision: Revision
    duration: str
    commit: str  # short SHA; empty until the run resolves the commit

    @classmethod
    def of(cls, revision: Revision) -> RunRow:
        """The row for ``revision``."""
        return cls(
            revision=revision,
            duration=duration_text(revision.duration),
            commit=short_sha(revision.commit_sha),
        )
