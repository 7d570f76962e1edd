"""Step 1 of the pipeline: read ``defaults.yaml`` and ``services/*.yaml``."""

from __future__ import annotations

import multiprocessing
import os
import threading
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
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
    """The enricher's whole input, as read from one directory."""

    defaults: SourceFile | None = None
    services: list[SourceFile] = field(default_factory=list)
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


def load_source(root: Path) -> Source:
    """Read the enricher input under ``root``; other files are ignored."""
    source = Source()
    defaults = root / DEFAULTS_FILE
    if defaults.is_file():
        data, problem = _read(root, DEFAULTS_FILE, defaults.is_symlink())
        if problem:
            source.errors.append(problem)
        else:
            source.defaults = SourceFile(DEFAULTS_FILE, data)
    services_dir = root / SERVICES_DIR
    if not services_dir.is_dir():
        return source
    with os.scandir(services_dir) as entries:
        found = sorted(
            (f"{SERVICES_DIR}/{e.name}", e.is_symlink())
            for e in entries
            if e.name.endswith(SERVICE_SUFFIXES) and e.is_file()
        )
    for (rel, _), (data, problem) in zip(found, _read_all(root, found), strict=True):
        if problem:
            source.errors.append(problem)
        else:
            source.services.append(SourceFile(rel, data))
    return source


_Files = list[tuple[str, bool]]
_Parsed = list[tuple[Any, Problem | None]]


def _read_many(root: Path, files: _Files) -> _Parsed:
    return [_read(root, rel, is_link) for rel, is_link in files]


def _read_all(root: Path, files: _Files) -> _Parsed:
    """Parse every file; large repositories use a second process for half of them.

    Parsing is most of a run and holds the GIL, so only a process helps. Forking is
    safe only while this process has a single thread; otherwise, or on a single
    core, everything is parsed here.
    """
    if not _can_fork_helper(len(files)):
        return _read_many(root, files)
    half = len(files) // 2
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    helper = context.Process(
        target=_parse_for_parent, args=(root, files[half:], sender), daemon=True
    )
    helper.start()
    sender.close()
    first = _read_many(root, files[:half])
    try:
        second: _Parsed = receiver.recv()
    except (EOFError, OSError):  # the helper died: do its share here
        second = _read_many(root, files[half:])
    finally:
        receiver.close()
        helper.join()
    return first + second


PARALLEL_FROM_FILES = 1000


def _can_fork_helper(count: int) -> bool:
    return (
        count >= PARALLEL_FROM_FILES
        and (os.cpu_count() or 1) > 1
        and threading.active_count() == 1
        and "fork" in multiprocessing.get_all_start_methods()
    )


def _parse_for_parent(root: Path, files: _Files, sender: Connection) -> None:
    try:
        sender.send(_read_many(root, files))
    finally:
        sender.close()
