"""``firework-agent check``: validate node configs as the agent would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parent.parent / "examples" / "nodes" / "node-1.yaml"
GOLDEN = Path(__file__).parent / "golden" / "nodes"


def agent(*args: str) -> subprocess.CompletedProcess[str]:
    # the console script installed next to this interpreter by `pip install`
    exe = Path(sys.executable).with_name("firework-agent")
    assert exe.exists(), f"{exe} missing: install the project (pip install -e .)"
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, check=False
    )


def test_valid_configs_pass_and_are_summarised() -> None:
    done = agent("check", str(EXAMPLE), str(GOLDEN / "general-purpose.yaml"))
    assert done.returncode == 0, done.stderr
    assert f"{EXAMPLE}: node node-1: web, cache" in done.stdout
    assert "node general-purpose: api, db, web" in done.stdout


def test_every_error_is_printed_and_the_exit_code_is_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "node: n\nservices:\n"
        "- {name: web, image: rel, kernel: /k, vcpus: 0, memory_mb: 256,"
        " kernel_args: x, extra: 1}\n"
    )
    done = agent("check", str(bad))
    assert done.returncode == 1
    assert f"error: {bad}: service web: image: must be an absolute path" in done.stderr
    assert (
        f"error: {bad}: service web: vcpus: must be between 1 and 32, got 0"
        in done.stderr
    )
    assert f"warning: {bad}: service web: unknown field extra ignored" in done.stderr


@pytest.mark.parametrize(
    ("content", "expected"),
    [("node: [x\n", "invalid YAML (line 2, column 1)"), (None, "No such file")],
)
def test_unreadable_files_are_errors(
    tmp_path: Path, content: str | None, expected: str
) -> None:
    path = tmp_path / "n.yaml"
    if content is not None:
        path.write_text(content)
    done = agent("check", str(path))
    assert done.returncode == 1
    assert f"error: {path}: {expected}" in done.stderr
