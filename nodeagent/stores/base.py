"""What every config store offers: fetch the raw node config of one label."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

# A label names a file in the store: a DNS label, so it cannot leave nodes/.
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# Node configs are a few kilobytes; anything this big is a mistake or an attack.
MAX_CONFIG_BYTES = 4 * 1024 * 1024


class StoreError(Exception):
    """A node config could not be fetched; the message never holds a credential.

    ``transient`` is true when trying again later may help (network down, server
    errors, timeouts) and false when it will not without someone acting (no such
    file, access denied, oversized config).
    """

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.message = message
        self.transient = transient


@dataclass(frozen=True)
class Fetched:
    """One label's node config as the store returned it.

    ``changed`` is false when the store says nothing changed since this store's
    previous fetch of the label; ``data`` may then be None.
    """

    label: str
    data: bytes | None
    revision: str
    changed: bool


class ConfigStore(Protocol):
    """Where the agent reads ``nodes/<label>.yaml`` from."""

    def fetch(self, label: str) -> Fetched:
        """The config of ``label``; raises :class:`StoreError`."""
        ...


def node_path(label: str) -> str:
    """``nodes/<label>.yaml``, refusing labels that are not DNS labels."""
    if not _LABEL.match(label):
        raise StoreError(f"label {label!r} is not a valid node name", transient=False)
    return f"nodes/{label}.yaml"


def check_size(where: str, size: int) -> None:
    """Refuse a config over :data:`MAX_CONFIG_BYTES`."""
    if size > MAX_CONFIG_BYTES:
        raise StoreError(
            f"{where}: config is larger than {MAX_CONFIG_BYTES} bytes",
            transient=False,
        )
