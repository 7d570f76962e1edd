"""The HealthMonitor against real servers on guest addresses (harness in
``conftest.py``)."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import replace

from tests.health.conftest import (
    target,
)


def test_a_passing_check_reports_healthy_once(net, recorder, start_monitor):
    monitor = start_monitor()

    monitor.set_targets({"web": target(net.guests[0])})

    recorder.wait_for("healthy")
    time.sleep(0.3)
    assert len(recorder.of("on_healthy")) == 1
    assert recorder.snapshot().services[0].health.status == "healthy"
    assert len(net.guests[0].hits()) >= 4  # still probed, every 50 ms


def test_on_unhealthy_fires_once_after_retries_failures(net, recorder, start_monitor):
    net.guests[0].set("fail")
    monitor = start_monitor()

    monitor.set_targets({"web": target(net.guests[0], retries=3)})

    [call] = recorder.wait_for("on_unhealthy")
    assert call.error == "http 503"
    time.sleep(0.3)  # more failures of the same streak
    assert len(recorder.of("on_unhealthy")) == 1
    failures = [e.failures for e in recorder.events if e.error == "http 503"]
    assert failures[:3] == [1, 2, 3]
    assert len(failures) > 3
    # before the third failure the health was still undecided
    assert [e.kind for e in recorder.events if e.failures in (1, 2)] == ["unknown"] * 2
    health = recorder.snapshot().services[0].health
    assert (health.status, health.last_error) == ("unhealthy", "http 503")


def test_a_slow_guest_does_not_delay_other_services(net, recorder, start_monitor):
    slow, fast = net.guests
    slow.set("slow")
    monitor = start_monitor()
    began = time.monotonic()

    monitor.set_targets(
        {
            "slow": target(slow, "slow", interval=0.1, timeout=0.5),
            "fast": target(fast, "fast", interval=0.1),
        }
    )
    time.sleep(1.5)

    fast_hits = [t for t in fast.hits() if t >= began]
    gaps = [b - a for a, b in itertools.pairwise(fast_hits)]
    assert len(fast_hits) >= 12
    assert max(gaps) < 0.2
    # one probe in flight per service: each waits for the previous to time out
    assert 2 <= len(slow.hits()) <= 4
    [call] = recorder.wait_for("on_unhealthy", service="slow")
    assert call.error == "timeout after 0.5s"


def test_failures_in_the_grace_period_do_not_count_but_are_shown(
    net, recorder, start_monitor
):
    guest = net.guests[0]
    guest.set("fail")
    monitor = start_monitor(grace=1.0)
    began = time.monotonic()

    monitor.set_targets({"web": target(guest, interval=5.0, retries=1)})
    time.sleep(0.8)
    health = recorder.snapshot().services[0].health
    assert (health.status, health.failures) == ("unknown", 0)
    assert health.last_error == "http 503"
    assert recorder.of("on_unhealthy") == []
    # probed while booting every 0.5 s, not every (5 s) interval
    assert len(guest.hits()) >= 2

    [call] = recorder.wait_for("on_unhealthy")
    assert call.at >= began + 1.0


def test_a_pass_in_the_grace_period_is_healthy_at_once(net, recorder, start_monitor):
    guest = net.guests[0]
    monitor = start_monitor(grace=5.0)
    began = time.monotonic()

    monitor.set_targets({"web": target(guest, interval=5.0)})

    [call] = recorder.wait_for("on_healthy")
    assert call.at < began + 0.5
    # healthy: back to the service's own interval
    time.sleep(1.0)
    assert len(guest.hits()) == 1


def test_started_begins_a_new_streak_after_a_new_grace(net, recorder, start_monitor):
    guest = net.guests[0]
    guest.set("fail")
    monitor = start_monitor(grace=0.3)
    monitor.set_targets({"web": target(guest)})
    recorder.wait_for("on_unhealthy")

    restarted = time.monotonic()
    monitor.started("web")

    health = recorder.snapshot().services[0].health
    assert (health.status, health.failures) == ("unknown", 0)
    [_, second] = recorder.wait_for("on_unhealthy", count=2)
    # probed during the new grace, but its failures only counted after it
    assert any(restarted <= t < restarted + 0.3 for t in guest.hits())
    assert second.at >= restarted + 0.3


def test_recovery_calls_on_healthy_and_a_new_streak_can_fail(
    net, recorder, start_monitor
):
    guest = net.guests[0]
    guest.set("fail")
    monitor = start_monitor()
    monitor.set_targets({"web": target(guest)})
    recorder.wait_for("on_unhealthy")

    guest.set("ok")
    recorder.wait_for("on_healthy")
    health = recorder.snapshot().services[0].health
    assert (health.status, health.failures) == ("healthy", 0)

    guest.set("fail")
    recorder.wait_for("on_unhealthy", count=2)
    assert len(recorder.of("on_healthy")) == 1


def test_tcp_check_turns_unhealthy_when_the_port_closes(net, recorder, start_monitor):
    guest = net.guests[0]
    monitor = start_monitor()
    monitor.set_targets({"db": target(guest, "db", type="tcp")})
    recorder.wait_for("on_healthy", service="db")

    guest.set("down")

    [call] = recorder.wait_for("on_unhealthy", service="db")
    assert call.error == "connect: Connection refused"
    assert guest.hits() == []  # a tcp check connects and closes, sends nothing


def test_a_changed_check_applies_without_a_restart(net, recorder, start_monitor):
    guest = net.guests[0]
    monitor = start_monitor()
    slow_schedule = target(guest, path="/wrong", interval=5.0, retries=1)
    monitor.set_targets({"web": slow_schedule})
    [call] = recorder.wait_for("on_unhealthy")
    assert call.error == "http 404"

    monitor.set_targets({"web": replace(slow_schedule, path="/health", interval=0.05)})

    recorder.wait_for("on_healthy", timeout=1.0)  # not after the old 5 s interval
    time.sleep(0.3)
    assert len(guest.hits("/health")) >= 4


def test_failures_are_kept_only_while_the_endpoint_stays(net, recorder, start_monitor):
    first, second = net.guests
    first.set("fail")
    second.set("fail")
    monitor = start_monitor()
    old = target(first, retries=100, interval=0.05)
    monitor.set_targets({"web": old})
    recorder.wait_for("unknown", count=3)  # the add, then two failures

    monitor.set_targets({"web": replace(old, interval=0.06)})
    kept = recorder.of("unknown")[-1].failures
    monitor.set_targets({"web": replace(old, host=second.ip)})
    moved = recorder.of("unknown")[-1]

    assert kept >= 2
    assert (moved.failures, moved.error) == (0, "")
    time.sleep(0.2)
    assert len(second.hits()) >= 2


def test_removed_services_are_no_longer_probed(net, recorder, start_monitor):
    guest = net.guests[0]
    monitor = start_monitor()
    monitor.set_targets({"web": target(guest)})
    recorder.wait_for("healthy")

    monitor.set_targets({})
    time.sleep(0.1)  # a probe in flight may still land
    count = len(guest.hits())
    time.sleep(0.3)

    assert len(guest.hits()) == count


def test_stop_waits_for_probes_in_flight(net, recorder, start_monitor):
    guest = net.guests[0]
    guest.set("slow")
    monitor = start_monitor()
    monitor.set_targets({"web": target(guest, timeout=0.4)})
    time.sleep(0.1)

    began = time.monotonic()
    monitor.stop()

    assert time.monotonic() - began < 0.5
    assert not any(t.name.startswith("health") for t in threading.enumerate())
    assert recorder.of("on_unhealthy") == []
