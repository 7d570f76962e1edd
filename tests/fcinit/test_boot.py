"""fc-init on this host under busybox sh and dash: network, hostname, and life
as PID 1 (harness in ``conftest.py``)."""

from __future__ import annotations

import shutil
import signal
import time

import pytest

from tests.fcinit.conftest import (
    IP_ARG,
    TIMEOUT,
    Guest,
    calls_of,
)

# -- network ------------------------------------------------------------------------


def test_ip_argument_configures_the_device(guest: Guest) -> None:
    result = guest.run(f"console=ttyS0 {IP_ARG}", args=[guest.service])
    assert calls_of(result, "ip") == [
        "ip link set lo up",
        "ip -4 addr show dev eth0",
        "ip link set dev eth0 up",
        "ip addr add 172.16.0.2/24 dev eth0",
        "ip route add default via 172.16.0.1 dev eth0",
    ]
    assert calls_of(result, "arping") == ["arping -U -c 1 -I eth0 172.16.0.2"]
    assert (
        "fc-init: network up dev=eth0 ip=172.16.0.2/24 gateway=172.16.0.1"
        in result.stderr
    )


@pytest.mark.parametrize(
    ("netmask", "prefix"),
    [
        ("255.255.255.0", 24),
        ("255.255.0.0", 16),
        ("255.255.255.252", 30),
        ("255.255.255.255", 32),
        ("255.0.0.0", 8),
        ("255.255.254.0", 23),
        ("255.255.255.128", 25),
        ("128.0.0.0", 1),
        ("0.0.0.0", 0),
    ],
)
def test_netmask_becomes_a_prefix_length(
    guest: Guest, netmask: str, prefix: int
) -> None:
    result = guest.run(
        f"console=ttyS0 ip=10.1.2.3::10.1.2.1:{netmask}::eth0:off",
        args=[guest.service],
    )
    assert f"ip addr add 10.1.2.3/{prefix} dev eth0" in result.calls


@pytest.mark.parametrize(
    "netmask",
    ["255.0.255.0", "255.255.255.1", "256.0.0.0", "255.255.255", "", "24", "a.b.c.d"],
)
def test_a_bad_netmask_leaves_the_device_alone(guest: Guest, netmask: str) -> None:
    result = guest.run(
        f"console=ttyS0 ip=10.1.2.3::10.1.2.1:{netmask}::eth0:off",
        args=[guest.service],
    )
    assert f"fc-init: bad netmask={netmask}, network not configured" in result.stderr
    assert calls_of(result, "ip") == ["ip link set lo up"]
    assert result.service is not None


def test_a_bad_gateway_leaves_the_device_alone(guest: Guest) -> None:
    result = guest.run(
        "console=ttyS0 ip=10.1.2.3::10.1.2:255.255.255.0::eth0:off",
        args=[guest.service],
    )
    assert "fc-init: bad gateway=10.1.2, network not configured" in result.stderr
    assert calls_of(result, "ip") == ["ip link set lo up"]


def test_without_gateway_no_default_route_is_added(guest: Guest) -> None:
    result = guest.run(
        "console=ttyS0 ip=10.1.2.3:::255.255.0.0::eth1:off", args=[guest.service]
    )
    assert "ip addr add 10.1.2.3/16 dev eth1" in result.calls
    assert not [call for call in result.calls if "route" in call]


def test_a_configured_device_is_left_alone(guest: Guest) -> None:
    result = guest.run(
        f"console=ttyS0 {IP_ARG}",
        args=[guest.service],
        env={"FAKE_IP_SHOW": "    inet 172.16.0.2/24 scope global eth0"},
    )
    assert calls_of(result, "ip") == ["ip link set lo up", "ip -4 addr show dev eth0"]
    assert "fc-init: network already configured dev=eth0" in result.stderr


def test_without_ip_argument_only_loopback_comes_up(guest: Guest) -> None:
    result = guest.run("console=ttyS0", args=[guest.service])
    assert calls_of(result, "ip") == ["ip link set lo up"]
    assert calls_of(result, "arping") == []


@pytest.mark.parametrize("arg", ["ip=", "ip=off", "ip=none"])
def test_ip_off_or_empty_only_brings_up_loopback(guest: Guest, arg: str) -> None:
    result = guest.run(f"console=ttyS0 {arg}", args=[guest.service])
    assert calls_of(result, "ip") == ["ip link set lo up"]
    assert "fc-init: ip=" not in result.stderr


@pytest.mark.parametrize("client", ["dhcp", "10.0.0.300", "10.0.0", "1.2.3.4.5"])
def test_ip_without_a_static_address_is_not_configured(
    guest: Guest, client: str
) -> None:
    result = guest.run(f"console=ttyS0 ip={client}", args=[guest.service])
    assert calls_of(result, "ip") == ["ip link set lo up"]
    assert "ip= without a static address is not supported" in result.stderr


# -- hostname -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "hostname"),
    [
        ("ip=10.0.0.2::10.0.0.1:255.255.255.0:web-1:eth0:off", "web-1"),
        ("firework.hostname=api.internal", "api.internal"),
        (
            "ip=10.0.0.2::10.0.0.1:255.255.255.0:from-ip:eth0:off "
            "firework.hostname=other",
            "from-ip",
        ),
        ('firework.hostname="quoted"', "quoted"),
    ],
)
def test_hostname_is_set_and_written(guest: Guest, args: str, hostname: str) -> None:
    result = guest.run(f"console=ttyS0 {args}", args=[guest.service])
    assert calls_of(result, "hostname") == [f"hostname {hostname}"]
    assert (guest.root / "etc" / "hostname").read_text() == f"{hostname}\n"
    assert (guest.root / "etc" / "hosts").read_text() == (
        f"127.0.0.1 localhost\n127.0.0.1 {hostname}\n"
    )


def test_hosts_entries_are_not_duplicated(guest: Guest) -> None:
    hosts = guest.root / "etc" / "hosts"
    hosts.write_text("# static\n127.0.0.1\tlocalhost web\n")
    guest.run("console=ttyS0 firework.hostname=web", args=[guest.service])
    assert hosts.read_text() == "# static\n127.0.0.1\tlocalhost web\n"


def test_a_read_only_etc_does_not_stop_the_boot(guest: Guest) -> None:
    shutil.rmtree(guest.root / "etc")
    result = guest.run("console=ttyS0 firework.hostname=web", args=[guest.service])
    assert calls_of(result, "hostname") == ["hostname web"]
    assert result.returncode == 0
    assert result.service is not None


def test_without_a_hostname_it_is_left_as_is(guest: Guest) -> None:
    result = guest.run(f"console=ttyS0 {IP_ARG}", args=[guest.service])
    assert calls_of(result, "hostname") == []
    assert not (guest.root / "etc" / "hostname").exists()


@pytest.mark.parametrize("name", ["bad_name", "-rf", "a;b", "$(id)"])
def test_a_bad_hostname_is_refused(guest: Guest, name: str) -> None:
    result = guest.run(f"console=ttyS0 firework.hostname={name}", args=[guest.service])
    assert calls_of(result, "hostname") == []
    assert f"fc-init: bad hostname={name}, left unchanged" in result.stderr


# -- as PID 1 ---------------------------------------------------------------------------


def test_pid1_routes_ctrl_alt_del_to_init(guest: Guest) -> None:
    guest.run(args=[guest.service], pid1=True)
    assert guest.cad.read_text() == "0\n"


def test_not_pid1_leaves_ctrl_alt_del_alone(guest: Guest) -> None:
    guest.run(args=[guest.service])
    assert guest.cad.read_text() == "1\n"


def test_pid1_service_exit_is_logged_then_synced_and_rebooted(guest: Guest) -> None:
    process = guest.start(
        "console=ttyS0 firework.env.FAKE_EXIT=3", args=[guest.service], pid1=True
    )
    process.wait(timeout=TIMEOUT)
    result = guest.result(process)
    assert result.service is not None
    assert result.service["ppid"] == process.pid
    assert "fc-init: service exited status=3" in result.stderr
    assert result.calls[-2:] == ["sync", "reboot -f"]
    assert result.returncode == 3


@pytest.mark.parametrize(
    "signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"]
)
def test_pid1_signal_stops_the_service_with_sigterm(
    guest: Guest, signum: signal.Signals
) -> None:
    process = guest.start(
        "console=ttyS0 firework.stop_timeout=5", args=[guest.polite], pid1=True
    )
    assert int(guest.wait_for("ready")) == process.pid
    process.send_signal(signum)
    process.wait(timeout=TIMEOUT)
    result = guest.result(process)
    # fc-init only ends after the service, which wrote this before exiting.
    assert (guest.out / "term").read_text() == "term\n"
    name = signum.name.removeprefix("SIG")
    assert f"fc-init: stopping service signal={name}" in result.stderr
    assert "fc-init: service exited status=0" in result.stderr
    assert "killing" not in result.stderr
    assert result.calls[-2:] == ["sync", "reboot -f"]


def test_pid1_kills_a_service_that_ignores_sigterm_after_stop_timeout(
    guest: Guest,
) -> None:
    process = guest.start(
        "console=ttyS0 firework.stop_timeout=1", args=[guest.stubborn], pid1=True
    )
    guest.wait_for("ready")
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    process.wait(timeout=TIMEOUT)
    elapsed = time.monotonic() - started
    result = guest.result(process)
    assert 0.9 < elapsed < 5
    assert "service still running after timeout=1, killing" in result.stderr
    assert "fc-init: service exited status=137" in result.stderr
    assert result.calls[-2:] == ["sync", "reboot -f"]


def test_pid1_without_a_command_reboots(guest: Guest) -> None:
    result = guest.run("console=ttyS0", pid1=True)
    assert "fc-init: no service command" in result.stderr
    assert result.calls[-2:] == ["sync", "reboot -f"]
    assert result.returncode == 1
