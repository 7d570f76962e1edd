"""Loading specs: the forked helper for large repositories changes nothing."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from controlplane.enrichment import load, run_pipeline
from tests.specrepo import base_service, write_repo


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    services = [base_service(f"svc-{i:03d}", vcpus=1 + i % 3) for i in range(40)]
    root = write_repo(tmp_path, services)
    (root / "services" / "broken.yaml").write_text("name: [oops\n")
    return root


def test_parallel_parse_gives_the_same_result_as_serial(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    serial = load.load_source(repo)
    real = load._parse_for_parent

    def marking(*args: object) -> None:
        (tmp_path / f"helper-{os.getpid()}").touch()  # runs in the forked helper
        real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(load, "PARALLEL_FROM_FILES", 2)
    monkeypatch.setattr(load, "_parse_for_parent", marking)
    parallel = load.load_source(repo)
    helpers = [p.name for p in tmp_path.glob("helper-*")]
    assert helpers and helpers != [f"helper-{os.getpid()}"]
    assert parallel == serial
    assert [str(e) for e in parallel.errors] == [
        "services/broken.yaml: invalid YAML (line 2, column 1): "
        "did not find expected ',' or ']'"
    ]
    assert run_pipeline(repo).errors == parallel.errors


def test_no_fork_while_other_threads_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(load, "PARALLEL_FROM_FILES", 2)
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert not load._can_fork_helper(100)
    finally:
        stop.set()
        thread.join()
    assert load._can_fork_helper(100)


def test_small_repositories_are_parsed_in_process() -> None:
    assert not load._can_fork_helper(load.PARALLEL_FROM_FILES - 1)
