"""Large runs use a forked helper for half the work; the result must not change."""

from __future__ import annotations

import multiprocessing
import multiprocessing.queues
import os
import threading
from pathlib import Path

import pytest

import controlplane.enrichment as pipeline
from controlplane.enrichment import fork
from tests.specrepo import base_service, write_repo


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    services = [
        base_service(f"svc-{i:03d}", vcpus=1 + i % 3, node_type=f"pool-{i % 3}")
        for i in range(40)
    ]
    link = {"service": "svc-000", "env": "UPSTREAM", "port": 1}
    services.append(base_service("linker", node_type="pool-0", links=[link]))
    return write_repo(tmp_path / "repo", services)


def run_with_helper(
    root: Path, marks: Path, monkeypatch: pytest.MonkeyPatch
) -> pipeline.PipelineResult:
    real = fork._serve

    def marking(*args: object) -> None:
        (marks / f"helper-{os.getpid()}").touch()  # runs in the forked helper
        real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline, "PARALLEL_FROM_SERVICES", 2)
    monkeypatch.setattr(fork, "_serve", marking)
    result = pipeline.run_pipeline(root)
    helpers = {p.name for p in marks.glob("helper-*")}
    assert helpers and f"helper-{os.getpid()}" not in helpers
    return result


def test_helper_gives_the_same_configs_as_one_process(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    serial = pipeline.run_pipeline(repo)
    assert serial.ok and len(serial.configs) == 3
    assert run_with_helper(repo, tmp_path, monkeypatch) == serial


def test_helper_gives_the_same_errors_as_one_process(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (repo / "services" / "broken.yaml").write_text("name: [oops\n")
    (repo / "services" / "zz-dup.yaml").write_text(
        "name: svc-001\nimage: /i\nnode_type: pool-1\n"
    )
    serial = pipeline.run_pipeline(repo)
    assert [str(e) for e in serial.errors] == [
        "services/broken.yaml: invalid YAML (line 2, column 1): "
        "did not find expected ',' or ']'",
        "services/zz-dup.yaml: service svc-001: duplicate name (also in services/svc-001.yaml)",
    ]
    assert run_with_helper(repo, tmp_path, monkeypatch) == serial


def test_no_helper_while_other_threads_run() -> None:
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert not fork.can_fork_helper(100, min_work=2)
    finally:
        stop.set()
        thread.join()
    assert fork.can_fork_helper(100, min_work=2)


def test_small_work_stays_in_process() -> None:
    assert not fork.can_fork_helper(99, min_work=100)


@pytest.mark.parametrize(
    ("weights", "cut"),
    [([], 0), ([1], 0), ([1, 1], 1), ([5, 1, 1, 1, 1, 1], 1), ([1, 1, 1, 9], 3)],
)
def test_split_point_balances_the_weights(weights: list[int], cut: int) -> None:
    assert fork.split_point(weights) == cut


def test_map_split_keeps_order_and_values() -> None:
    items = list(range(50))
    assert fork.map_split(lambda i: i * i, items, min_work=2) == [i * i for i in items]


def _report_can_fork(queue: multiprocessing.queues.Queue[bool]) -> None:
    queue.put(fork.can_fork_helper(100, min_work=2))


def test_no_helper_inside_a_daemonic_worker_process() -> None:
    # worker pools run tasks in daemonic processes, which may not have children
    context = multiprocessing.get_context("fork")
    queue: multiprocessing.queues.Queue[bool] = context.Queue()
    worker = context.Process(target=_report_can_fork, args=(queue,), daemon=True)
    worker.start()
    worker.join(10)
    assert queue.get(timeout=5) is False
