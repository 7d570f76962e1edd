"""Kernel command lines: ip=, env encoding, the -- token, links, length limit."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodeagent.addressing import Addressing, Assigned, assign_addresses
from nodeagent.kernelargs import (
    CMDLINE_BUDGET,
    build_kernel_args,
    encode_env,
    resolve_links,
    split_cmdline,
)
from nodeagent.spec.fields import KERNEL_CMDLINE_MAX
from nodeagent.spec.node import ServiceConfig

WEB = Assigned(
    tap="fw-web",
    ip="172.16.0.2",
    mac="AA:FC:AC:10:00:02",
    prefix_len=24,
    netmask="255.255.255.0",
    gateway="172.16.0.1",
)
WEB_IP = "ip=172.16.0.2::172.16.0.1:255.255.255.0::eth0:off"


def svc(name: str, network: Any = True, **fields: Any) -> ServiceConfig:
    return ServiceConfig.model_validate(
        {
            "name": name,
            "image": f"/img/{name}.ext4",
            "kernel": "/img/vmlinux",
            "vcpus": 1,
            "memory_mb": 256,
            "kernel_args": "console=ttyS0",
            "network": network,
            **fields,
        }
    )


def decode_env(args: list[str]) -> dict[str, str]:
    """What the guest init does with the firework.env* arguments."""
    env: dict[str, str] = {}
    for arg in args:
        name, _, value = arg.partition("=")
        if name.startswith("firework.env64."):
            padded = value + "=" * (-len(value) % 4)
            env[name.removeprefix("firework.env64.")] = base64.urlsafe_b64decode(
                padded
            ).decode()
        else:
            env[name.removeprefix("firework.env.")] = value
    return env


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", "firework.env.K=plain"),
        ("", "firework.env.K="),
        ("a=b", "firework.env.K=a=b"),
        ("postgres://u:p@db:5432/x?y=1", "firework.env.K=postgres://u:p@db:5432/x?y=1"),
        ("two words", "firework.env64.K=dHdvIHdvcmRz"),
        ('say "hi"', "firework.env64.K=c2F5ICJoaSI"),
        ("it's", "firework.env64.K=aXQncw"),
        ("C:\\dir", "firework.env64.K=QzpcZGly"),
        ("tab\there", "firework.env64.K=dGFiCWhlcmU"),
        ("grüße", "firework.env64.K=Z3LDvMOfZQ"),
        ("\x7f", "firework.env64.K=fw"),
        ("??>", "firework.env.K=??>"),
        ("\xff\xfe", "firework.env64.K=w7_Dvg"),
    ],
)
def test_env_value_encoding(value: str, expected: str) -> None:
    assert encode_env({"K": value}) == [expected]
    assert decode_env(encode_env({"K": value})) == {"K": value}


def test_env_is_sorted_by_key_whatever_the_encoding() -> None:
    assert encode_env({"b": "2", "A": "1", "a": "x y"}) == [
        "firework.env.A=1",
        "firework.env64.a=eCB5",
        "firework.env.b=2",
    ]


env_keys = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)


@given(st.dictionaries(env_keys, st.text(max_size=40), max_size=10))
def test_encoded_env_round_trips_and_is_safe_on_a_command_line(
    env: dict[str, str],
) -> None:
    args = encode_env(env)
    assert decode_env(args) == env
    for arg in args:
        assert arg.isascii() and arg.isprintable()
        assert not set(arg) & set(" \"'\\")
    line = build_kernel_args("console=ttyS0", None, env)
    assert split_cmdline(line)[1:] == args


@pytest.mark.parametrize(
    ("kernel_args", "expected"),
    [
        ("console=ttyS0", f"console=ttyS0 {WEB_IP} firework.env.A=1"),
        (
            "console=ttyS0 -- --verbose x",
            f"console=ttyS0 {WEB_IP} firework.env.A=1 -- --verbose x",
        ),
        ("-- -v", f"{WEB_IP} firework.env.A=1 -- -v"),
        ("a  b\t c", f"a b c {WEB_IP} firework.env.A=1"),
        ('a="x -- y" b', f'a="x -- y" b {WEB_IP} firework.env.A=1'),
        # ip= after -- is init's, not the kernel's.
        ("x -- ip=1.2.3.4", f"x {WEB_IP} firework.env.A=1 -- ip=1.2.3.4"),
        (
            "ip=172.16.0.2:::255.255.0.0::eth0:off -- a",
            "ip=172.16.0.2:::255.255.0.0::eth0:off firework.env.A=1 -- a",
        ),
    ],
)
def test_ip_and_env_go_before_the_init_separator(
    kernel_args: str, expected: str
) -> None:
    assert build_kernel_args(kernel_args, WEB, {"A": "1"}, service="web") == expected


@pytest.mark.parametrize(
    "kernel_args", ["ip=172.16.0.9::172.16.0.1:255.255.255.0::eth0:off", "ip=dhcp"]
)
def test_own_ip_argument_must_match_the_assigned_address(kernel_args: str) -> None:
    with pytest.raises(ValueError, match="does not match") as caught:
        build_kernel_args(kernel_args, WEB, {}, service="web")
    assert str(caught.value) == (
        f"service web: kernel_args {kernel_args} does not match the assigned "
        "guest IP 172.16.0.2"
    )


def test_without_network_no_ip_argument_is_added() -> None:
    assert build_kernel_args("console=ttyS0", None, {}) == "console=ttyS0"


@pytest.mark.parametrize(
    ("subnet", "gateway", "ip_arg"),
    [
        ("172.16.16.0/20", "172.16.16.1", "ip=172.16.16.2::172.16.16.1:255.255.240.0"),
        ("10.0.0.0/8", "10.0.0.1", "ip=10.0.0.2::10.0.0.1:255.0.0.0"),
        ("172.16.0.0/30", "172.16.0.1", "ip=172.16.0.2::172.16.0.1:255.255.255.252"),
        ("172.16.0.0/24", "172.16.0.254", "ip=172.16.0.1::172.16.0.254:255.255.255.0"),
    ],
)
def test_ip_argument_uses_the_netmask_of_the_real_prefix(
    subnet: str, gateway: str, ip_arg: str
) -> None:
    assigned = assign_addresses([svc("web")], subnet, gateway).assigned["web"]
    assert build_kernel_args("", assigned, {}) == f"{ip_arg}::eth0:off"


def test_command_line_length_is_checked_with_room_for_firecracker() -> None:
    assert CMDLINE_BUDGET == KERNEL_CMDLINE_MAX - 64
    base = "console=ttyS0"
    prefix = f"{base} firework.env.K="
    fits = "x" * (CMDLINE_BUDGET - len(prefix))
    assert len(build_kernel_args(base, None, {"K": fits})) == CMDLINE_BUDGET
    with pytest.raises(ValueError, match="kernel command line is") as caught:
        build_kernel_args(base, None, {"K": fits + "x"}, service="web")
    assert str(caught.value) == (
        f"service web: kernel command line is {CMDLINE_BUDGET + 1} bytes, "
        f"at most {CMDLINE_BUDGET} fit"
    )


def test_links_become_urls_and_win_over_static_env() -> None:
    services = [
        svc(
            "web",
            env={"DB_URL": "static", "MODE": "prod"},
            links=[
                {
                    "service": "db",
                    "env": "DB_URL",
                    "port": 5432,
                    "protocol": "postgres",
                },
                {"service": "cache", "env": "CACHE", "port": 6379},
            ],
        ),
        svc("db"),
        svc("cache"),
    ]
    addressing = assign_addresses(services, "172.16.0.0/24", "172.16.0.1")
    envs, errors = resolve_links(services, addressing)
    assert errors == {}
    assert envs == {
        "web": {
            "DB_URL": "postgres://172.16.0.3:5432",
            "MODE": "prod",
            "CACHE": "http://172.16.0.2:6379",
        },
        "db": {},
        "cache": {},
    }


def test_broken_links_are_errors_of_the_linking_service() -> None:
    services = [
        svc(
            "web",
            env={"KEEP": "1"},
            links=[
                {"service": "db", "env": "A", "port": 1},
                {"service": "batch", "env": "B", "port": 2},
                {"service": "ghost", "env": "C", "port": 3},
                {"service": "ok", "env": "D", "port": 4},
            ],
        ),
        svc("db"),
        svc("batch", network=False),
        svc("ok"),
        svc("other", links=[{"service": "ok", "env": "OK", "port": 80}]),
    ]
    addressing = Addressing(assigned={"ok": WEB}, errors={"db": "service db: x"})
    envs, errors = resolve_links(services, addressing)
    assert errors == {
        "web": "service web: links[0]: db has no address; "
        "links[1]: batch has no network; links[2]: no service ghost here"
    }
    # No half-resolved env for a service that must not start.
    assert "web" not in envs
    assert envs["other"] == {"OK": "http://172.16.0.2:80"}
