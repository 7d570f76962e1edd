"""Durations written like ``10s``, ``1m30s`` or ``500ms``."""

from __future__ import annotations

import re

_PART = re.compile(r"(\d+)(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_ORDER = ["h", "m", "s", "ms"]


def parse_duration(text: str) -> float:
    """Seconds in ``text``; units h, m, s, ms, largest first, each at most once.

    Anything else raises ``ValueError``: a typo must never become zero.
    """
    if not isinstance(text, str) or not text:
        raise ValueError(f"{text!r} is not a duration like 10s, 1m30s or 500ms")
    pos, total, last = 0, 0.0, -1
    for match in _PART.finditer(text):
        unit = _ORDER.index(match.group(2))
        if match.start() != pos or unit <= last:
            break
        total += int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos, last = match.end(), unit
    if pos != len(text):
        raise ValueError(f"{text!r} is not a duration like 10s, 1m30s or 500ms")
    return total
