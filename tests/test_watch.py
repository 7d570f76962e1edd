"""ExitWatcher on real processes: our children, orphans adopted by init, and pids
that were gone before anyone watched them.

Only processes these tests start are ever killed, each by its own pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeagent.watch import ExitWatcher

PROMPT = 0.2  # how soon an exit must be reported
QUIET = 0.3  # how long to wait to be sure nothing is reported


class Exits:
    """Records the calls of ``on_exit`` and waits for them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, float]] = []
        self._cond = threading.Condition()

    def __call__(self, service: str, pid: int) -> None:
        with self._cond:
            self.calls.append((service, pid, time.monotonic()))
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float) -> list[tuple[str, int]]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.calls) >= count, timeout)
            return [(s, p) for s, p, _ in self.calls]


@pytest.fixture
def exits() -> Exits:
    return Exits()


@pytest.fixture
def watcher(exits: Exits) -> Iterator[ExitWatcher]:
    w = ExitWatcher(exits)
    w.start()
    yield w
    w.stop()


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Children to kill in tests; whatever is left is killed and reaped after."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


def sleeper(procs: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["sleep", "30"])
    procs.append(proc)
    return proc


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    # the command name may hold spaces; the fields after it do not
    return int(stat.rsplit(")", 1)[1].split()[1])


@pytest.fixture
def orphan() -> Iterator[int]:
    """A ``sleep`` whose parent is not this process (its shell exited at once)."""
    out = subprocess.run(
        ["sh", "-c", "setsid sleep 30 </dev/null >/dev/null 2>&1 & echo $!"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pid = int(out)
    yield pid
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def test_a_killed_child_is_reported_at_once(watcher, exits, sleepers):
    proc = sleeper(sleepers)
    watcher.watch("web", proc.pid)
    time.sleep(0.05)

    killed_at = time.monotonic()
    proc.kill()

    assert exits.wait_for(1, 2.0) == [("web", proc.pid)]
    assert exits.calls[0][2] - killed_at < PROMPT


def test_an_exit_is_reported_only_once(watcher, exits, sleepers):
    proc = sleeper(sleepers)
    watcher.watch("web", proc.pid)
    proc.kill()
    exits.wait_for(1, 2.0)
    proc.wait()  # reaping does not make the pidfd report again

    time.sleep(QUIET)

    assert exits.wait_for(1, 0) == [("web", proc.pid)]


def test_a_process_that_is_not_our_child_is_reported(watcher, exits, orphan):
    assert parent_of(orphan) != os.getpid()
    watcher.watch("db", orphan)
    time.sleep(0.05)

    killed_at = time.monotonic()
    os.kill(orphan, signal.SIGKILL)

    assert exits.wait_for(1, 2.0) == [("db", orphan)]
    assert exits.calls[0][2] - killed_at < PROMPT


def test_a_pid_gone_before_watch_is_reported_soon(watcher, exits):
    proc = subprocess.Popen(["true"])
    proc.wait()  # reaped: the pid no longer exists

    watcher.watch("web", proc.pid)

    assert exits.wait_for(1, PROMPT) == [("web", proc.pid)]


def test_an_exited_but_unreaped_child_is_reported_soon(watcher, exits):
    proc = subprocess.Popen(["true"])
    time.sleep(0.1)  # a zombie now: its pid still exists

    watcher.watch("web", proc.pid)

    assert exits.wait_for(1, PROMPT) == [("web", proc.pid)]
    proc.wait()


def test_unwatched_process_exit_is_not_reported(watcher, exits, sleepers):
    proc = sleeper(sleepers)
    watcher.watch("web", proc.pid)

    watcher.unwatch("web")
    proc.kill()
    proc.wait()
    time.sleep(QUIET)

    assert exits.calls == []


def test_watching_a_new_pid_replaces_the_old_one(watcher, exits, sleepers):
    old, new = sleeper(sleepers), sleeper(sleepers)
    watcher.watch("web", old.pid)

    watcher.watch("web", new.pid)
    old.kill()
    time.sleep(QUIET)

    assert exits.calls == []
    new.kill()
    assert exits.wait_for(1, 2.0) == [("web", new.pid)]


def test_several_services_are_watched_at_once(watcher, exits, sleepers):
    procs = {name: sleeper(sleepers) for name in ("a", "b", "c")}
    for name, proc in procs.items():
        watcher.watch(name, proc.pid)

    procs["b"].kill()
    assert exits.wait_for(1, 2.0) == [("b", procs["b"].pid)]
    procs["a"].kill()
    procs["c"].kill()

    got = exits.wait_for(3, 2.0)
    assert sorted(got) == sorted((n, p.pid) for n, p in procs.items())


def test_a_callback_may_watch_again(exits, sleepers):
    """The agent restarts the VM from the callback and watches the new VMM."""
    replacement = sleeper(sleepers)

    def restart(service: str, pid: int) -> None:
        exits(service, pid)
        if pid != replacement.pid:
            agent_watcher.watch(service, replacement.pid)

    agent_watcher = ExitWatcher(restart)
    agent_watcher.start()
    try:
        first = sleeper(sleepers)
        agent_watcher.watch("web", first.pid)
        first.kill()
        exits.wait_for(1, 2.0)
        replacement.kill()

        assert exits.wait_for(2, 2.0) == [("web", first.pid), ("web", replacement.pid)]
    finally:
        agent_watcher.stop()


def test_a_failing_callback_does_not_stop_the_watcher(sleepers):
    seen: list[str] = []

    def on_exit(service: str, pid: int) -> None:
        seen.append(service)
        raise RuntimeError("boom")

    watcher = ExitWatcher(on_exit)
    watcher.start()
    try:
        for name in ("a", "b"):
            proc = sleeper(sleepers)
            watcher.watch(name, proc.pid)
            proc.kill()
            deadline = time.monotonic() + 2.0
            while name not in seen and time.monotonic() < deadline:
                time.sleep(0.01)
        assert seen == ["a", "b"]
    finally:
        watcher.stop()


def test_stop_joins_the_thread_and_leaves_processes_alone(exits, sleepers):
    proc = sleeper(sleepers)
    watcher = ExitWatcher(exits)
    watcher.start()
    watcher.watch("web", proc.pid)

    watcher.stop()

    assert not any(t.name == "exit-watcher" for t in threading.enumerate())
    assert proc.poll() is None
    assert exits.calls == []
