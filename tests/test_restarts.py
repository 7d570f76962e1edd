"""RestartPolicy: backoff growth, cap, jitter, crash loops and resets.

The policy takes the time as an argument, so every case runs on made-up clocks;
the jitter comes from a seeded ``random.Random``.
"""

from __future__ import annotations

import random

import pytest

from nodeagent.config import parse_agent_config
from nodeagent.restarts import RestartPolicy


def policy(
    initial: float = 1.0,
    cap: float = 300.0,
    restarts: int = 5,
    window: float = 600.0,
    seed: int = 7,
) -> RestartPolicy:
    return RestartPolicy(initial, cap, restarts, window, rng=random.Random(seed))


def delays(p: RestartPolicy, count: int, service: str = "web") -> list[float]:
    """The delay after each of ``count`` restarts, each made as soon as allowed."""
    now, out = 0.0, []
    for _ in range(count):
        assert p.due(service, now)
        delay = p.record(service, now)
        out.append(delay)
        now += delay
    return out


@pytest.mark.parametrize(
    ("initial", "cap", "restart", "base"),
    [
        (1.0, 300.0, 1, 1.0),
        (1.0, 300.0, 2, 2.0),
        (1.0, 300.0, 3, 4.0),
        (1.0, 300.0, 9, 256.0),
        (0.5, 300.0, 4, 4.0),
        (2.0, 10.0, 3, 8.0),
    ],
)
def test_delay_doubles_with_each_restart_within_jitter(initial, cap, restart, base):
    delay = delays(policy(initial, cap), restart)[-1]

    assert base * 0.8 <= delay <= base * 1.2


@pytest.mark.parametrize(("initial", "cap"), [(1.0, 300.0), (1.0, 5.0), (3.0, 3.0)])
def test_delay_never_exceeds_the_cap(initial, cap):
    got = delays(policy(initial, cap), 40)

    assert max(got) <= cap
    # once the doubled delay passes the cap, jitter may only pull it below
    assert all(cap * 0.8 <= d <= cap for d in got[-5:])


def test_first_delay_is_the_initial_delay_scaled_by_jitter_across_seeds():
    got = [policy(initial=10.0, seed=seed).record("web", 0.0) for seed in range(200)]

    assert min(got) >= 8.0
    assert max(got) <= 12.0
    # the jitter really spreads restarts out instead of being a constant
    assert max(got) - min(got) > 3.0


def test_same_seed_gives_same_delays():
    assert delays(policy(seed=3), 6) == delays(policy(seed=3), 6)


def test_first_restart_is_allowed_at_once_and_the_next_after_the_delay():
    p = policy(initial=10.0)

    assert p.due("web", 0.0)
    assert p.next_at("web") is None
    delay = p.record("web", 100.0)

    assert p.next_at("web") == 100.0 + delay
    assert not p.due("web", 100.0 + delay - 0.01)
    assert p.due("web", 100.0 + delay)


def test_services_back_off_independently():
    p = policy(initial=10.0)
    p.record("web", 0.0)
    p.record("web", 20.0)

    assert p.due("db", 20.0)
    assert p.attempts("web") == 2
    assert p.attempts("db") == 0


def test_reset_brings_the_backoff_back_to_the_start():
    p = policy(initial=1.0)
    delays(p, 6)

    p.reset("web")

    assert p.due("web", 0.0)
    assert p.next_at("web") is None
    assert p.attempts("web") == 0
    assert 0.8 <= p.record("web", 1000.0) <= 1.2


@pytest.mark.parametrize(
    ("times", "now", "looping"),
    [
        ([0, 10, 20, 30, 40], 40, True),  # 5 restarts in 40 s
        ([0, 10, 20, 30], 30, False),  # only 4
        ([0, 10, 20, 30, 40], 599, True),  # all still within 600 s
        ([0, 10, 20, 30, 40], 600, False),  # the first left the window
        ([0, 200, 400, 600, 800], 800, False),  # spread out: never 5 in 600 s
        ([0, 200, 400, 600, 700, 800, 900], 900, True),  # 5 of them in 600 s
    ],
)
def test_crashloop_after_enough_restarts_within_the_window(times, now, looping):
    p = policy(restarts=5, window=600.0)
    for t in times:
        p.record("web", float(t))

    assert p.crashlooping("web", float(now)) is looping


def test_crashloop_survives_a_reset_between_restarts():
    p = policy(restarts=3, window=600.0)
    for t in (0.0, 60.0, 120.0):
        p.record("web", t)
        p.reset("web")

    assert p.crashlooping("web", 120.0)


def test_forget_drops_everything_about_the_service():
    p = policy(restarts=2)
    p.record("web", 0.0)
    p.record("web", 1.0)

    p.forget("web")

    assert not p.crashlooping("web", 1.0)
    assert p.due("web", 1.0)
    assert p.attempts("web") == 0


def test_unknown_service_is_neither_delayed_nor_looping():
    p = policy()

    assert p.due("ghost", 0.0)
    assert not p.crashlooping("ghost", 0.0)
    p.reset("ghost")
    p.forget("ghost")


@pytest.mark.parametrize(
    ("initial", "cap", "restarts", "window"),
    [(0.0, 1.0, 5, 60.0), (2.0, 1.0, 5, 60.0), (1.0, 2.0, 0, 60.0), (1, 2, 5, 0.0)],
)
def test_nonsense_settings_are_refused(initial, cap, restarts, window):
    with pytest.raises(ValueError, match="need"):
        RestartPolicy(initial, cap, restarts, window)


def test_from_config_reads_the_agent_keys():
    config, _ = parse_agent_config(
        {
            "store_type": "local",
            "store_dir": "/srv/store",
            "restart_backoff_initial": "500ms",
            "restart_backoff_max": "1m",
            "crashloop_restarts": 3,
            "crashloop_window": "2m",
        }
    )

    p = RestartPolicy.from_config(config)

    assert (p.initial, p.cap, p.crashloop_restarts, p.window) == (0.5, 60.0, 3, 120.0)


def test_from_config_defaults():
    config, _ = parse_agent_config({"store_type": "local", "store_dir": "/srv/s"})

    p = RestartPolicy.from_config(config)

    assert (p.initial, p.cap, p.crashloop_restarts, p.window) == (1.0, 300.0, 5, 600.0)
