"""Step 1 of the pipeline: read ``defaults.yaml`` and ``services/*.yaml``.

Other files are ignored; service files are read one by one (see ``read_service``)
so that large repositories can be split between processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from controlplane.enrichment import yamlin
from nodeagent.spec import Problem
from nodeagent.spec.problems import yaml_error

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
    """``defaults.yaml`` as read from a repository, or the errors reading it."""

    defaults: SourceFile | None = None
    errors: list[Problem] = field(default_factory=list)


def parse_yaml(text: str | bytes, path: str) -> tuple[Any, Problem | None]:
    """Parse one YAML document; a syntax error becomes a Problem naming the file."""
    try:
        return yamlin.load(text), None
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        # libyaml's bindings raise ValueError on some malformed byte sequences
        return None, Problem(path, "", yaml_error(exc))


def _read(root: Path, rel: str, is_link: bool) -> tuple[Any, Problem | None]:
    target = root / rel
    try:
        if is_link and not target.resolve().is_relative_to(root.resolve()):
            return None, Problem(rel, "", "file links outside the repository")
        with open(target, "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            return None, Problem(rel, "", f"file is larger than {MAX_FILE_BYTES} bytes")
    except OSError as exc:
        return None, Problem(rel, "", f"cannot read file: {exc.strerror}")
    return parse_yaml(raw, rel)


def load_defaults_file(root: Path) -> Source:
    """A source holding ``defaults.yaml`` (or its error) and no services yet."""
    source = Source()
    defaults = root / DEFAULTS_FILE
    if defaults.is_file():
        data, problem = _read(root, DEFAULTS_FILE, defaults.is_symlink())
        if problem:
            source.errors.append(problem)
        else:
            source.defaults = SourceFile(DEFAULTS_FILE, data)
    return source


def service_files(root: Path) -> list[tuple[str, bool]]:
    """``(path relative to root, is a symlink)`` of every service file, sorted."""
    services_dir = root / SERVICES_DIR
    if not services_dir.is_dir():
        return []
    with os.scandir(services_dir) as entries:
        return sorted(
            (f"{SERVICES_DIR}/{e.name}", e.is_symlink())
            for e in entries
            if e.name.endswith(SERVICE_SUFFIXES) and e.is_file()
        )


def read_service(root: Path, rel: str, is_link: bool) -> SourceFile | Problem:
    """One parsed service file, or the problem that stopped it."""
    data, problem = _read(root, rel, is_link)
    return problem if problem else SourceFile(rel, data)
