"""Deterministic host-side names derived from service names.

Linux interface names hold at most 15 characters (IFNAMSIZ - 1). Short service
names map to ``fw-<name>``; longer ones to ``fw-<first 4>_<hash>``. Service names
are DNS labels and never contain ``_``, so a hashed name can never equal a short
one; two hashed names collide only on a 28-bit hash clash, which
:func:`assign_tap_names` detects.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

TAP_PREFIX = "fw-"
IFNAME_MAX = 15


class TapNameCollision(ValueError):
    """Two services would get the same TAP device name."""


def tap_name(service: str) -> str:
    """The TAP device name of ``service``; always at most 15 characters."""
    if len(TAP_PREFIX) + len(service) <= IFNAME_MAX:
        return TAP_PREFIX + service
    digest = hashlib.sha256(service.encode()).hexdigest()
    room = IFNAME_MAX - len(TAP_PREFIX) - 1 - 7
    return f"{TAP_PREFIX}{service[:room]}_{digest[:7]}"


def assign_tap_names(services: Iterable[str]) -> dict[str, str]:
    """TAP names for ``services``; raises :class:`TapNameCollision` on a clash."""
    owners: dict[str, str] = {}
    names: dict[str, str] = {}
    for service in services:
        name = tap_name(service)
        other = owners.get(name)
        if other is not None and other != service:
            raise TapNameCollision(
                f"services {other} and {service} both map to TAP device {name}"
            )
        owners[name] = service
        names[service] = name
    return names
