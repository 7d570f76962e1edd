"""Step 1 of the pipeline: read ``defaults.yaml`` and ``services/*.yaml``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nodeagent.spec import Problem

try:  # libyaml is several times faster; PyYAML's wheels ship it
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on the PyYAML build
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

MAX_FILE_BYTES = 1 << 20
DEFAULTS_FILE = "defaults.yaml"
SERVICES_DIR = "services"
SERVICE_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class SourceFile:
    """One parsed input file; ``path`` is relative to the repository root."""

    path: str
    data: Any


@dataclass
class Source:
    """The enricher's whole input, as read from one directory."""

    defaults: SourceFile | None = None
    services: list[SourceFile] = field(default_factory=list)
    errors: list[Problem] = field(default_factory=list)


def parse_yaml(text: str | bytes, path: str) -> tuple[Any, Problem | None]:
    """Parse one YAML document; a syntax error becomes a Problem naming the file."""
    try:
        return yaml.load(text, Loader=_Loader), None  # noqa: S506 - safe loader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        return None, Problem(path, "", f"invalid YAML{where}: {reason}")
    except (ValueError, RecursionError) as exc:
        # libyaml's bindings raise these on some malformed byte sequences
        return None, Problem(path, "", f"invalid YAML: {exc}")


def _read(root: Path, rel: str) -> tuple[Any, Problem | None]:
    target = root / rel
    try:
        if not target.resolve().is_relative_to(root.resolve()):
            return None, Problem(rel, "", "file links outside the repository")
        size = target.stat().st_size
        if size > MAX_FILE_BYTES:
            return None, Problem(
                rel, "", f"file is {size} bytes, at most {MAX_FILE_BYTES} allowed"
            )
        raw = target.read_bytes()
    except OSError as exc:
        return None, Problem(rel, "", f"cannot read file: {exc.strerror}")
    return parse_yaml(raw, rel)


def load_source(root: Path) -> Source:
    """Read the enricher input under ``root``; other files are ignored."""
    source = Source()
    if (root / DEFAULTS_FILE).is_file():
        data, problem = _read(root, DEFAULTS_FILE)
        if problem:
            source.errors.append(problem)
        else:
            source.defaults = SourceFile(DEFAULTS_FILE, data)
    services_dir = root / SERVICES_DIR
    if not services_dir.is_dir():
        return source
    for entry in sorted(services_dir.iterdir(), key=lambda p: p.name):
        if entry.suffix not in SERVICE_SUFFIXES or not entry.is_file():
            continue
        rel = f"{SERVICES_DIR}/{entry.name}"
        data, problem = _read(root, rel)
        if problem:
            source.errors.append(problem)
        else:
            source.services.append(SourceFile(rel, data))
    return source
