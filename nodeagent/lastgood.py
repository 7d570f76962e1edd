"""The last node config that validated, kept on disk, and the source built on it.

:class:`LastGood` writes every config that validated (raw bytes per label and
their revisions) to ``state_dir/lastgood/config.json`` atomically. A
:class:`ConfigSource` asks the store each time and falls back to that copy when
the store is unreachable or the new config is invalid, reporting it as stale.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from nodeagent.atomicfile import write_atomic
from nodeagent.stores import (
    ConfigInvalid,
    ConfigStore,
    Desired,
    RawConfig,
    StoreError,
    fetch_raw,
    parse_desired,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


class NoConfig(Exception):
    """Nothing was fetched and nothing is cached: there is no config to run."""


class LastGood:
    """The last valid config of this node, under ``state_dir/lastgood/``."""

    def __init__(self, state_dir: Path | str) -> None:
        self.dir = Path(state_dir) / "lastgood"
        self.path = self.dir / "config.json"

    def save(self, desired: Desired) -> None:
        """Write ``desired`` so that a crash leaves the old copy or the new one."""
        document = {
            "version": FORMAT_VERSION,
            "saved_at": datetime.now(UTC).isoformat(),
            "labels": [
                {
                    "label": label,
                    "revision": desired.revisions[label],
                    # surrogateescape keeps any byte through JSON unchanged
                    "data": desired.raw[label].decode("utf-8", "surrogateescape"),
                }
                for label in desired.labels
            ],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(document, indent=1).encode())
        log.info("last good config saved revisions=%s", _shown(desired))

    def load(self, labels: Sequence[str] | None = None) -> Desired | None:
        """The cached config, validated again; None when absent or unusable.

        With ``labels``, a copy saved for other labels is not used.
        """
        try:
            document = json.loads(self.path.read_bytes())
            raw = {
                item["label"]: RawConfig(
                    item["data"].encode("utf-8", "surrogateescape"), item["revision"]
                )
                for item in document["labels"]
            }
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("last good config unreadable path=%s error=%s", self.path, exc)
            return None
        if labels is not None and list(raw) != list(labels):
            log.warning(
                "last good config is for other labels cached=%s wanted=%s",
                ",".join(raw),
                ",".join(labels),
            )
            return None
        try:
            return parse_desired(raw)
        except (ConfigInvalid, StoreError) as exc:
            # e.g. a newer agent with stricter rules: better no cache than a bad one
            log.warning("last good config no longer valid error=%s", exc)
            return None


@dataclass(frozen=True)
class Snapshot:
    """The config to reconcile now, and whether it is stale (and why, since when)."""

    desired: Desired
    stale: bool = False
    stale_reason: str = ""
    stale_since: datetime | None = None


class ConfigSource:
    """The store, backed by the last good config.

    Each :meth:`current` call asks the store again, so a failure is retried on
    the next tick. While the store is unreachable or its config is invalid, the
    last good config is returned as stale, ``stale_since`` being the first
    failure in a row.
    """

    def __init__(
        self,
        store: ConfigStore,
        labels: Sequence[str],
        lastgood: LastGood,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.labels = list(labels)
        self.lastgood = lastgood
        self.clock = clock
        self._seen: dict[str, RawConfig] = {}  # last fetched, valid or not
        self._good: Desired | None = None
        self._loaded = False
        self._failing_since: datetime | None = None

    def current(self) -> Snapshot:
        """The config to run now; raises :class:`NoConfig` if there is none."""
        try:
            raw = fetch_raw(self.store, self.labels, self._seen)
            if self._good is not None and _same(self._good, raw):
                desired = self._good  # unchanged: no need to parse it again
            else:
                desired = parse_desired(raw)
        except StoreError as exc:
            return self._fallback(f"config_fetch_failed: {exc}")
        except ConfigInvalid as exc:
            return self._fallback(f"config_invalid: {exc}")
        if self._good is None or self._good.raw != desired.raw:
            for warning in desired.warnings:
                log.warning("node config warning: %s", warning)
            self.lastgood.save(desired)
        if self._failing_since is not None:
            log.info("config fresh again revisions=%s", _shown(desired))
        self._good, self._failing_since = desired, None
        return Snapshot(desired)

    def _fallback(self, reason: str) -> Snapshot:
        first = self._failing_since is None
        if first:
            self._failing_since = self.clock()
        if self._good is None and not self._loaded:
            self._loaded = True  # the cache only changes through us: read it once
            self._good = self.lastgood.load(self.labels)
        if self._good is None:
            raise NoConfig(f"no config to run and none cached: {reason}")
        if first:
            log.warning("using last good config reason=%s", reason)
        return Snapshot(self._good, True, reason, self._failing_since)


def _same(desired: Desired, raw: Mapping[str, RawConfig]) -> bool:
    """``raw`` holds exactly the bytes and revisions ``desired`` was parsed from."""
    return list(raw) == desired.labels and all(
        desired.raw[label] == item.data and desired.revisions[label] == item.revision
        for label, item in raw.items()
    )


def _shown(desired: Desired) -> str:
    return ",".join(f"{k}@{v[:12]}" for k, v in desired.revisions.items())
