"""Large runs use a forked helper for half the work; the result must not change.

Whether a helper may be forked depends on the whole process (its threads), so the
runs with a helper happen in a fresh, single-threaded Python process.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.queues
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import controlplane.enrichment as pipeline
from controlplane.enrichment import fork
from tests.specrepo import base_service, write_repo

ROOT = Path(__file__).parent.parent

# Runs the pipeline with a helper from 2 services on; prints the result and the
# pids that served as helpers.
WITH_HELPER = """
import json, os, sys
from pathlib import Path
import controlplane.enrichment as pipeline
from controlplane.enrichment import fork
real = fork._serve
def marking(*args):
    Path(sys.argv[2], f"helper-{os.getpid()}").touch()
    real(*args)
fork._serve = marking
pipeline.PARALLEL_FROM_SERVICES = 2
result = pipeline.run_pipeline(Path(sys.argv[1]))
print(json.dumps({"configs": result.configs, "services": result.services,
                  "errors": [str(e) for e in result.errors],
                  "warnings": [str(w) for w in result.warnings],
                  "me": os.getpid()}))
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    services = [
        base_service(f"svc-{i:03d}", vcpus=1 + i % 3, node_type=f"pool-{i % 3}")
        for i in range(40)
    ]
    link = {"service": "svc-000", "env": "UPSTREAM", "port": 1}
    services.append(base_service("linker", node_type="pool-0", links=[link]))
    return write_repo(tmp_path / "repo", services)


def run_with_helper(root: Path, marks: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", WITH_HELPER, str(root), str(marks)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    out: dict[str, object] = json.loads(done.stdout)
    helpers = {p.name for p in marks.glob("helper-*")}
    assert helpers and f"helper-{out.pop('me')}" not in helpers
    return out


def in_process(root: Path) -> dict[str, object]:
    result = pipeline.run_pipeline(root)
    return {
        "configs": result.configs,
        "services": result.services,
        "errors": [str(e) for e in result.errors],
        "warnings": [str(w) for w in result.warnings],
    }


def test_helper_gives_the_same_configs_as_one_process(
    repo: Path, tmp_path: Path
) -> None:
    serial = in_process(repo)
    assert not serial["errors"] and len(serial["configs"]) == 3  # type: ignore[arg-type]
    assert run_with_helper(repo, tmp_path) == serial


def test_helper_gives_the_same_errors_as_one_process(
    repo: Path, tmp_path: Path
) -> None:
    (repo / "services" / "broken.yaml").write_text("name: [oops\n")
    (repo / "services" / "zz-dup.yaml").write_text(
        "name: svc-001\nimage: /i\nnode_type: pool-1\n"
    )
    serial = in_process(repo)
    assert serial["errors"] == [
        "services/broken.yaml: invalid YAML (line 2, column 1): "
        "did not find expected ',' or ']'",
        "services/zz-dup.yaml: service svc-001: duplicate name (also in services/svc-001.yaml)",
    ]
    assert run_with_helper(repo, tmp_path) == serial


THREAD_CHECK = """
import threading
from controlplane.enrichment import fork
alone = fork.can_fork_helper(100, min_work=2)
stop = threading.Event()
thread = threading.Thread(target=stop.wait)
thread.start()
crowded = fork.can_fork_helper(100, min_work=2)
stop.set(); thread.join()
print(alone, crowded)
"""


def test_no_helper_while_other_threads_run() -> None:
    done = subprocess.run(
        [sys.executable, "-c", THREAD_CHECK],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.split() == ["True", "False"]


def test_no_helper_in_this_process_while_a_thread_runs() -> None:
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert not fork.can_fork_helper(100, min_work=2)
    finally:
        stop.set()
        thread.join()


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
