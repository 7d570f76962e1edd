"""From raw node configs of every label to one validated desired state."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import yaml

from nodeagent.spec import NodeConfig, ServiceConfig, check_services
from nodeagent.spec import validate_node_config as validate
from nodeagent.spec.problems import yaml_error
from nodeagent.stores.base import ConfigStore, StoreError, node_path

log = logging.getLogger(__name__)


class ConfigInvalid(Exception):
    """The node configs fetched do not validate; ``errors`` lists every problem."""

    def __init__(self, errors: Sequence[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = list(errors)


@dataclass(frozen=True)
class Desired:
    """The merged config of all labels, with each label's raw bytes and revision."""

    config: NodeConfig
    revisions: dict[str, str]
    warnings: list[str] = field(default_factory=list)
    raw: dict[str, bytes] = field(default_factory=dict, repr=False)

    @property
    def labels(self) -> list[str]:
        """The labels merged, in order."""
        return list(self.revisions)


@dataclass(frozen=True)
class RawConfig:
    """One label's current bytes and revision, fetched now or earlier."""

    data: bytes
    revision: str


def fetch_raw(
    store: ConfigStore,
    labels: Sequence[str],
    seen: dict[str, RawConfig] | None = None,
) -> dict[str, RawConfig]:
    """Fetch every label; an unchanged one is taken from ``seen``.

    ``seen`` holds what earlier fetches from the same store returned and is
    updated label by label, so it stays right when a later label fails.
    """
    if not labels:
        raise StoreError("no node labels to fetch", transient=False)
    known = {} if seen is None else seen
    for label in labels:
        fetched = store.fetch(label)
        if fetched.changed and fetched.data is not None:
            known[label] = RawConfig(fetched.data, fetched.revision)
        elif label not in known:
            # the store remembers a fetch this caller did not keep: a bug upstream
            raise StoreError(
                f"{node_path(label)}: unchanged but no earlier copy", transient=False
            )
    return {label: known[label] for label in labels}


def parse_desired(raw: Mapping[str, RawConfig]) -> Desired:
    """Parse, validate and merge the configs of ``raw`` in label order.

    A service defined by several labels is taken from the last one, with a
    warning. Raises :class:`ConfigInvalid` with every error found.
    """
    errors: list[str] = []
    warnings: list[str] = []
    configs: dict[str, NodeConfig] = {}
    for label, item in raw.items():
        file = node_path(label)
        try:
            data = yaml.safe_load(item.data)
        except yaml.YAMLError as exc:
            errors.append(f"{file}: {yaml_error(exc)}")
            continue
        config, problems, notes = validate(data, file)
        errors.extend(str(p) for p in problems)
        warnings.extend(str(n) for n in notes)
        if config is not None:
            configs[label] = config
    if errors:
        raise ConfigInvalid(errors)
    services, file_of = _merge(configs, warnings)
    errors = [str(p) for p in check_services(services, file_of)]
    if errors:
        raise ConfigInvalid(errors)
    first = next(iter(configs.values()))
    merged = NodeConfig(node=first.node, services=tuple(services))
    return Desired(
        config=merged,
        revisions={label: item.revision for label, item in raw.items()},
        warnings=warnings,
        raw={label: item.data for label, item in raw.items()},
    )


def _merge(
    configs: Mapping[str, NodeConfig], warnings: list[str]
) -> tuple[list[ServiceConfig], dict[str, str]]:
    by_name: dict[str, ServiceConfig] = {}
    file_of: dict[str, str] = {}
    for label, config in configs.items():
        file = node_path(label)
        for service in config.services:
            if service.name in by_name:
                warnings.append(
                    f"{file}: service {service.name}: also in {file_of[service.name]},"
                    f" the one in {file} is used"
                )
            by_name[service.name] = service
            file_of[service.name] = file
    services = [by_name[name] for name in sorted(by_name)]
    return services, file_of


def fetch_desired(
    store: ConfigStore,
    labels: Sequence[str],
    seen: dict[str, RawConfig] | None = None,
) -> Desired:
    """Fetch, validate and merge the configs of ``labels`` from ``store``."""
    desired = parse_desired(fetch_raw(store, labels, seen))
    for warning in desired.warnings:
        log.warning("node config warning: %s", warning)
    return desired
