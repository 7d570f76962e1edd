"""Health probes against real servers on guest addresses (harness in ``conftest.py``)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from nodeagent.health import Target, target_for
from nodeagent.spec.node import ServiceConfig
from tests.health.conftest import (
    probe_in,
    target,
)

# -- probe --------------------------------------------------------------------


def test_http_probe_reports_what_the_guest_answered(net):
    guest = net.guests[0]
    cases = [
        ("ok", "/health", None),
        ("fail", "/health", "http 503"),
        ("redirect", "/health", "http 302"),  # not followed
        ("ok", "/missing", "http 404"),
        ("down", "/health", "connect: Connection refused"),
        ("slow", "/health", "timeout after 0.3s"),
    ]
    for mode, path, expected in cases:
        guest.set(mode)
        began = time.monotonic()
        got = probe_in(net.node, target(guest, path=path, timeout=0.3))
        assert got == expected, (mode, path)
        assert time.monotonic() - began < 0.3 + 0.15  # the deadline holds


# -- target_for ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("check", "expected"),
    [
        (None, None),
        (
            {"type": "http", "port": 8080},
            Target("web", "http", "172.16.0.5", 8080, "/", 10.0, 5.0, 3),
        ),
        (
            {"type": "tcp", "port": 53, "interval": "1m30s", "timeout": "500ms"},
            Target("web", "tcp", "172.16.0.5", 53, None, 90.0, 0.5, 3),
        ),
    ],
)
def test_target_for(check, expected):
    data: dict[str, Any] = {
        "name": "web",
        "image": "/img/web.ext4",
        "kernel": "/img/vmlinux",
        "vcpus": 1,
        "memory_mb": 256,
        "kernel_args": "console=ttyS0",
        "network": True,
        "health_check": check,
    }

    assert target_for(ServiceConfig.model_validate(data), "172.16.0.5") == expected
