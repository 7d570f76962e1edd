"""Steps 2-4 of the pipeline: validate, enrich with defaults, group by node type.

Priority for every field: service spec > ``defaults.yaml`` > fallback. Health checks
merge field by field. All errors of all files are collected; a run with any error
produces no node configs at all.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from controlplane.enrichment.load import Source, SourceFile
from nodeagent.naming import tap_name
from nodeagent.resolve import shared_images
from nodeagent.spec import (
    Defaults,
    NodeConfig,
    Problem,
    ServiceConfig,
    ServiceSpec,
    check_services,
)
from nodeagent.spec.input import split_health_check_off
from nodeagent.spec.node import (
    FALLBACK_INTERVAL,
    FALLBACK_KERNEL,
    FALLBACK_KERNEL_ARGS,
    FALLBACK_MEMORY_MB,
    FALLBACK_RETRIES,
    FALLBACK_TIMEOUT,
    FALLBACK_VCPUS,
)
from nodeagent.spec.problems import problems_from, sort_problems, unknown_fields

_FALLBACKS: dict[str, Any] = {
    "kernel": FALLBACK_KERNEL,
    "vcpus": FALLBACK_VCPUS,
    "memory_mb": FALLBACK_MEMORY_MB,
    "kernel_args": FALLBACK_KERNEL_ARGS,
}
_HEALTH_FALLBACKS: dict[str, Any] = {
    "interval": FALLBACK_INTERVAL,
    "timeout": FALLBACK_TIMEOUT,
    "retries": FALLBACK_RETRIES,
}
_INHERITED = ("node_type", "kernel", "initrd", "vcpus", "memory_mb", "kernel_args")


@dataclass
class Enriched:
    """The outcome of a run: node configs by node type, or errors; warnings always."""

    nodes: dict[str, NodeConfig] = field(default_factory=dict)
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def _warn_unknown(
    model: type[Defaults], file: SourceFile, service: str
) -> list[Problem]:
    return [
        Problem(file.path, service, f"unknown field {path} ignored")
        for path in unknown_fields(model, file.data)
    ]


def _load_defaults(source: Source, out: Enriched) -> Defaults | None:
    file = source.defaults
    if file is None or file.data is None:
        return Defaults()
    if not isinstance(file.data, Mapping):
        out.errors.append(Problem(file.path, "", "must be a mapping"))
        return None
    out.warnings.extend(_warn_unknown(Defaults, file, ""))
    try:
        return Defaults.model_validate(file.data)
    except ValidationError as exc:
        out.errors.extend(problems_from(exc, file.path, ""))
        return None


def _label(file: SourceFile) -> str:
    name = file.data.get("name") if isinstance(file.data, Mapping) else None
    return name if isinstance(name, str) and name else ""


@dataclass(frozen=True)
class _Loaded:
    spec: ServiceSpec
    health_check_off: bool
    invalid: frozenset[str]  # top-level fields already reported as invalid


def _load_spec(file: SourceFile, out: Enriched) -> _Loaded | None:
    """The validated spec, or what is left of it without its invalid fields."""
    label = _label(file)
    if not isinstance(file.data, Mapping):
        out.errors.append(Problem(file.path, "", "must be a mapping"))
        return None
    out.warnings.extend(_warn_unknown(ServiceSpec, file, label))
    data, health_check_off = split_health_check_off(file.data)
    try:
        return _Loaded(ServiceSpec.model_validate(data), health_check_off, frozenset())
    except ValidationError as exc:
        out.errors.extend(problems_from(exc, file.path, label))
        invalid = frozenset(str(e["loc"][0]) for e in exc.errors() if e["loc"])
    # Keep checking the rest: errors that only the merge with defaults reveals
    # (a health check without a type, say) are reported in the same run.
    if not invalid or "name" in invalid:
        return None
    kept = {k: v for k, v in data.items() if k not in invalid}
    if "image" in invalid:
        kept["image"] = "/"  # stands in for the reported image; never published
    try:
        return _Loaded(ServiceSpec.model_validate(kept), health_check_off, invalid)
    except ValidationError:
        return None


def _field_of(problem: Problem) -> str:
    """``vcpus`` for ``vcpus: must be ...`` or ``missing vcpus``."""
    text = problem.message.removeprefix("missing ")
    return re.split(r"[.:\[ ]", text, maxsplit=1)[0]


def _health_check(
    spec: ServiceSpec,
    defaults: Defaults,
    networked: bool,
    file: str,
    out: Enriched,
) -> dict[str, Any] | None:
    """Merge the health check field by field, service over defaults over fallback."""
    own = spec.health_check.model_dump(exclude_none=True) if spec.health_check else {}
    inherited = (
        defaults.health_check.model_dump(exclude_none=True)
        if defaults.health_check
        else {}
    )
    if not own and not inherited:
        return None
    if not own and not networked:
        out.warnings.append(
            Problem(file, spec.name, "health_check from defaults skipped: no network")
        )
        return None
    merged = {**_HEALTH_FALLBACKS, **inherited, **own}
    if merged.get("type") == "tcp" and "path" not in own:
        merged.pop("path", None)  # an inherited http path means nothing to tcp
    return merged


def enrich_spec(
    spec: ServiceSpec,
    defaults: Defaults,
    file: str,
    out: Enriched,
    health_check_off: bool = False,
) -> tuple[str, ServiceConfig] | None:
    """One service spec resolved against defaults; None (with errors) if invalid."""
    given = spec.model_dump(exclude_unset=True)
    merged: dict[str, Any] = {"name": spec.name, "image": spec.image}
    for key in _INHERITED:
        value = given.get(key, getattr(defaults, key))
        if value is None:
            value = _FALLBACKS.get(key)
        if value is not None:
            merged[key] = value
    networked = bool(given.get("network", defaults.network))
    if networked:
        merged["network"] = {"interface": tap_name(spec.name)}
    merged["env"] = {**defaults.env, **spec.env}
    merged["metadata"] = {**defaults.metadata, **spec.metadata}
    merged["port_forwards"] = [pf.model_dump() for pf in spec.port_forwards]
    merged["links"] = [link.model_dump() for link in spec.links]
    if not health_check_off:
        merged["health_check"] = _health_check(spec, defaults, networked, file, out)
    node_type = merged.pop("node_type", None)
    if node_type is None:
        out.errors.append(Problem(file, spec.name, "missing node_type"))
    try:
        config = ServiceConfig.model_validate(merged)
    except ValidationError as exc:
        out.errors.extend(problems_from(exc, file, spec.name))
        return None
    return (node_type, config) if node_type else None


@dataclass
class SpecOutcome:
    """What one service file gave: its resolved config, or errors; warnings too.

    Picklable cheaply (the config travels as plain data), so a helper process can
    resolve some of the files of a large repository.
    """

    path: str
    label: str
    name: str | None = None  # the valid service name, even if the spec is broken
    node_type: str | None = None
    config: ServiceConfig | None = None
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.config is not None:
            state["config"] = self.config.model_dump()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state["config"] is not None:
            state["config"] = ServiceConfig.model_validate(state["config"])
        self.__dict__.update(state)


def resolve_spec(file: SourceFile, defaults: Defaults | None) -> SpecOutcome:
    """Validate one service file and resolve it against (valid) defaults."""
    found = Enriched()
    outcome = SpecOutcome(file.path, _label(file), errors=found.errors)
    loaded = _load_spec(file, found)
    outcome.warnings = found.warnings
    if loaded is None:
        return outcome
    spec = loaded.spec
    outcome.name = spec.name
    if defaults is None:
        return outcome  # defaults.yaml is broken: its errors are reported already
    if loaded.invalid:
        scratch = Enriched()
        enrich_spec(spec, defaults, file.path, scratch, loaded.health_check_off)
        found.errors.extend(
            p for p in scratch.errors if _field_of(p) not in loaded.invalid
        )
        return outcome
    resolved = enrich_spec(spec, defaults, file.path, found, loaded.health_check_off)
    if resolved is not None:
        outcome.node_type, outcome.config = resolved
    return outcome


def load_defaults(source: Source) -> tuple[Defaults | None, Enriched]:
    """The validated defaults (None if invalid) and what checking them found."""
    found = Enriched(errors=list(source.errors))
    return _load_defaults(source, found), found


def assemble(outcomes: list[SpecOutcome], found: Enriched) -> Enriched:
    """Group resolved services by node type and check the rules across services."""
    out = found
    files: dict[str, str] = {}
    broken: set[str] = set()  # reported already; links to them say nothing more
    groups: dict[str, list[ServiceConfig]] = {}
    for outcome in outcomes:
        out.errors.extend(outcome.errors)
        out.warnings.extend(outcome.warnings)
        if outcome.name is None:
            broken.add(outcome.label)
            continue
        if outcome.name in files:
            message = f"duplicate name (also in {files[outcome.name]})"
            out.errors.append(Problem(outcome.path, outcome.name, message))
            continue
        files[outcome.name] = outcome.path
        if outcome.config is None or outcome.node_type is None:
            broken.add(outcome.name)
            continue
        groups.setdefault(outcome.node_type, []).append(outcome.config)
    for node_type in sorted(groups):
        services = sorted(groups[node_type], key=lambda s: s.name)
        out.errors.extend(check_services(services, files, broken))
        # A warning, not an error: the agent starts the first and refuses the rest.
        out.warnings.extend(
            Problem(files[name], name, message)
            for name, message in shared_images(services).items()
        )
        out.nodes[node_type] = NodeConfig(node=node_type, services=tuple(services))
    out.errors = sort_problems(out.errors)
    out.warnings = sort_problems(out.warnings)
    if out.errors:
        out.nodes = {}
    return out
