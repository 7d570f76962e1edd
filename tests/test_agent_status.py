"""AgentStatus tells its listeners when a service's state, pid or health changes."""

from __future__ import annotations

from nodeagent.status import AgentStatus


def counted() -> tuple[AgentStatus, list[int]]:
    status = AgentStatus("n1", ["web-node"])
    calls: list[int] = []
    status.on_change(lambda: calls.append(1))
    return status, calls


def test_state_and_pid_changes_are_announced_other_fields_are_not() -> None:
    status, calls = counted()
    status.upsert_service("web", state="starting", pid=None)  # as new: no change
    assert calls == []

    status.upsert_service("web", state="running", pid=41)
    status.upsert_service("web", guest_ip="172.16.0.2", last_error="")
    status.upsert_service("web", state="running", pid=41)
    assert len(calls) == 1

    status.upsert_service("web", pid=42)
    assert len(calls) == 2


def test_a_restart_a_health_verdict_and_a_removal_are_announced() -> None:
    status, calls = counted()
    status.upsert_service("web", state="running", pid=41)
    calls.clear()

    status.record_restart("web", "service web: vm not running")
    assert len(calls) == 1
    status.record_health("web", "healthy", failures=0)
    status.record_health("web", "healthy", failures=0)  # same verdict, new time
    assert len(calls) == 2
    status.remove_service("web")
    status.remove_service("web")  # already gone
    assert len(calls) == 3


def test_a_listener_runs_outside_the_lock() -> None:
    status = AgentStatus("n1")
    seen: list[int] = []
    # a listener that reads the status (as the reporter's snapshot does) would
    # deadlock if it were called under the lock
    status.on_change(lambda: seen.append(len(status.snapshot().services)))
    status.upsert_service("web", state="running", pid=7)
    assert seen == [1]
