"""Helpers for tests that run the double: launching, waiting, reading its log."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FIRECRACKER_BIN = Path(__file__).resolve().parent / "firecracker"
JAILER_BIN = Path(__file__).resolve().parent / "jailer"


def double_env(**extra: str) -> dict[str, str]:
    """The environment the launcher needs, plus knobs such as FCDOUBLE_FAIL."""
    return {**os.environ, "FIREWORK_PYTHON": sys.executable, **extra}


def wait_for(predicate: Any, timeout: float = 5.0, what: str = "condition") -> None:
    """Poll until ``predicate()`` is true or fail with ``what``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def read_log(path: Path) -> list[dict[str, Any]]:
    """The double's JSONL request log."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def kill_group(pid: int) -> None:
    """Kill a process group started with ``start_new_session`` (test teardown)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def children(pid: int) -> list[int]:
    """Direct children of a pid, from /proc: those of every one of its threads
    (a thread's ``children`` file lists only the processes it forked)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def alive(pid: int) -> bool:
    """True when the pid exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def live_argvs() -> Iterator[tuple[int, list[bytes]]]:
    """Every live process on the host, with its argv split on NULs."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if alive(int(entry.name)):
            yield int(entry.name), argv


def pids_with_id(instance_id: str) -> list[int]:
    """Live processes whose argv has ``--id <instance_id>``."""
    wanted = (b"--id", instance_id.encode())
    return [pid for pid, argv in live_argvs() if wanted in itertools.pairwise(argv)]


def spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start the launcher in its own session, output to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [str(FIRECRACKER_BIN), *argv],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
