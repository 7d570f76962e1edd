"""A node config store in a local directory: for single hosts and tests."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from nodeagent.stores.base import Fetched, StoreError, check_size, node_path

log = logging.getLogger(__name__)


class LocalDirStore:
    """Reads ``<path>/nodes/<label>.yaml``; the revision is the content's sha256."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._last: dict[str, str] = {}

    def fetch(self, label: str) -> Fetched:
        """The config of ``label``, unchanged when its content is the same."""
        file = self.path / node_path(label)
        where = f"local store {self.path}: {node_path(label)}"
        try:
            check_size(where, file.stat().st_size)
            data = file.read_bytes()
        except FileNotFoundError:
            raise StoreError(f"{where}: no such file", transient=False) from None
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise StoreError(f"{where}: {reason}", transient=True) from None
        check_size(where, len(data))  # it may have grown since stat()
        revision = hashlib.sha256(data).hexdigest()
        if self._last.get(label) == revision:
            return Fetched(label, None, revision, changed=False)
        self._last[label] = revision
        log.debug("config read label=%s revision=%s", label, revision[:12])
        return Fetched(label, data, revision, changed=True)
