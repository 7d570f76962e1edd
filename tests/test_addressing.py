"""Guest IPs and MACs: any prefix, pinned addresses, exhaustion, determinism."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nodeagent.addressing import Addressing, Assigned, assign_addresses
from nodeagent.naming import tap_name
from nodeagent.spec.node import ServiceConfig

MAC_FORMAT = re.compile(r"[0-9A-F]{2}(:[0-9A-F]{2}){5}")


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


def names(n: int) -> list[str]:
    return [f"s{i:05d}" for i in range(n)]


def ips(result: Addressing) -> dict[str, str]:
    return {name: a.ip for name, a in result.assigned.items()}


@pytest.mark.parametrize(
    ("subnet", "gateway", "expected", "netmask"),
    [
        ("10.0.0.0/8", "10.0.0.1", ["10.0.0.2", "10.0.0.3"], "255.0.0.0"),
        ("172.16.0.0/16", "172.16.0.1", ["172.16.0.2", "172.16.0.3"], "255.255.0.0"),
        ("172.16.0.0/24", "172.16.0.1", ["172.16.0.2", "172.16.0.3"], "255.255.255.0"),
        (
            "172.16.0.0/24",
            "172.16.0.254",
            ["172.16.0.1", "172.16.0.2"],
            "255.255.255.0",
        ),
        ("172.16.0.0/24", "172.16.0.2", ["172.16.0.1", "172.16.0.3"], "255.255.255.0"),
        (
            "172.16.16.0/20",
            "172.16.16.1",
            ["172.16.16.2", "172.16.16.3"],
            "255.255.240.0",
        ),
        (
            "172.16.0.16/28",
            "172.16.0.17",
            ["172.16.0.18", "172.16.0.19"],
            "255.255.255.240",
        ),
        (
            "172.16.0.8/29",
            "172.16.0.9",
            ["172.16.0.10", "172.16.0.11"],
            "255.255.255.248",
        ),
    ],
)
def test_first_host_addresses_upward_skipping_the_gateway(
    subnet: str, gateway: str, expected: list[str], netmask: str
) -> None:
    result = assign_addresses([svc("web"), svc("api")], subnet, gateway)
    assert result.errors == {}
    prefix = int(subnet.split("/")[1])
    # Sorted by name: api before web.
    assert result.assigned == {
        "api": Assigned(
            tap="fw-api",
            ip=expected[0],
            mac=result.assigned["api"].mac,
            prefix_len=prefix,
            netmask=netmask,
            gateway=gateway,
        ),
        "web": Assigned(
            tap="fw-web",
            ip=expected[1],
            mac=result.assigned["web"].mac,
            prefix_len=prefix,
            netmask=netmask,
            gateway=gateway,
        ),
    }


@pytest.mark.parametrize(
    ("subnet", "gateway", "count", "fit", "message"),
    [
        ("172.16.0.0/30", "172.16.0.1", 3, 1, "1 service fits"),
        ("172.16.0.0/29", "172.16.0.1", 8, 5, "5 services fit"),
        ("172.16.0.0/28", "172.16.0.14", 15, 13, "13 services fit"),
        ("172.16.0.0/24", "172.16.0.1", 260, 253, "253 services fit"),
    ],
)
def test_exhaustion_is_an_error_only_for_the_services_that_do_not_fit(
    subnet: str, gateway: str, count: int, fit: int, message: str
) -> None:
    services = [svc(n) for n in names(count)]
    result = assign_addresses(reversed(services), subnet, gateway)
    fitting, left_over = names(count)[:fit], names(count)[fit:]
    assert sorted(result.assigned) == fitting
    assert result.errors == {
        n: f"service {n}: no free address in {subnet} ({message})" for n in left_over
    }
    net = ipaddress.IPv4Network(subnet)
    used = {ipaddress.IPv4Address(ip) for ip in ips(result).values()}
    # Every host address but the gateway is used: nothing was wasted.
    assert used == set(net.hosts()) - {ipaddress.IPv4Address(gateway)}


@pytest.mark.parametrize(
    ("subnet", "gateway"),
    [("172.16.0.0/31", "172.16.0.1"), ("172.16.0.1/32", "172.16.0.1")],
)
def test_subnets_without_host_room_give_every_service_an_error(
    subnet: str, gateway: str
) -> None:
    result = assign_addresses([svc("web"), svc("api")], subnet, gateway)
    assert result.assigned == {}
    assert result.errors == {
        n: f"service {n}: no free address in {subnet} (0 services fit)"
        for n in ("api", "web")
    }


@pytest.mark.parametrize(
    ("subnet", "gateway", "message"),
    [
        ("172.16.0.0/24", "172.16.1.1", "vm_gateway: 172.16.1.1 is not a host"),
        ("172.16.0.0/24", "172.16.0.0", "vm_gateway: 172.16.0.0 is not a host"),
        ("172.16.0.0/24", "172.16.0.255", "vm_gateway: 172.16.0.255 is not a host"),
        ("172.16.0.1/24", "172.16.0.1", "vm_subnet/vm_gateway: .*host bits"),
        ("172.16.0.0/24", "nope", "vm_subnet/vm_gateway:"),
    ],
)
def test_invalid_subnet_or_gateway_is_a_node_error(
    subnet: str, gateway: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        assign_addresses([svc("web")], subnet, gateway)


def test_services_without_network_get_nothing() -> None:
    result = assign_addresses(
        [svc("batch", network=False), svc("web")], "172.16.0.0/24", "172.16.0.1"
    )
    assert ips(result) == {"web": "172.16.0.2"}
    assert result.errors == {}


def test_pinned_addresses_are_kept_and_reserved_before_automatic_ones() -> None:
    services = [
        svc("a", network={"guest_ip": "172.16.0.3"}),
        svc("z", network={"guest_ip": "172.16.0.2", "guest_mac": "02:00:00:00:00:01"}),
        svc("b"),
        svc("c"),
    ]
    result = assign_addresses(services, "172.16.0.0/24", "172.16.0.1")
    assert result.errors == {}
    assert ips(result) == {
        "a": "172.16.0.3",
        "z": "172.16.0.2",
        "b": "172.16.0.4",
        "c": "172.16.0.5",
    }
    assert result.assigned["z"].mac == "02:00:00:00:00:01"
    assert result.assigned["a"].mac == "AA:FC:AC:10:00:03"


def test_pinned_interface_is_the_tap() -> None:
    result = assign_addresses(
        [svc("web", network={"interface": "tap7"})], "172.16.0.0/24", "172.16.0.1"
    )
    assert result.assigned["web"].tap == "tap7"


@pytest.mark.parametrize(
    ("network", "message"),
    [
        ({"guest_ip": "10.0.0.5"}, "network.guest_ip 10.0.0.5 is outside"),
        ({"guest_ip": "172.16.0.1"}, "172.16.0.1 is also used by the gateway"),
        ({"guest_ip": "172.16.0.0"}, "172.16.0.0 is not a host address of"),
        ({"guest_ip": "172.16.0.255"}, "172.16.0.255 is not a host address of"),
        ({"guest_ip": "172.16.0.9"}, "172.16.0.9 is also used by service a"),
        (
            {"guest_mac": "02:00:00:00:00:09"},
            "network.guest_mac 02:00:00:00:00:09 is also used by service a",
        ),
    ],
)
def test_bad_pinned_addresses_are_errors_naming_the_service(
    network: dict[str, str], message: str
) -> None:
    first = svc(
        "a", network={"guest_ip": "172.16.0.9", "guest_mac": "02:00:00:00:00:09"}
    )
    result = assign_addresses(
        [svc("b", network=network), first, svc("c")], "172.16.0.0/24", "172.16.0.1"
    )
    assert list(result.errors) == ["b"]
    assert result.errors["b"].startswith("service b: ")
    assert message in result.errors["b"]
    # The rejected service reserves nothing: c takes the first free address.
    assert ips(result) == {"a": "172.16.0.9", "c": "172.16.0.2"}


def test_a_pinned_mac_equal_to_a_derived_one_is_never_shared() -> None:
    services = [
        svc("a", network={"guest_mac": "AA:FC:AC:10:00:02", "guest_ip": "172.16.0.9"}),
        svc("b"),
        svc("c", network={"guest_ip": "172.16.0.3"}),
    ]
    result = assign_addresses(services, "172.16.0.0/24", "172.16.0.1")
    # b skips .2, whose derived MAC a pinned.
    assert ips(result) == {"a": "172.16.0.9", "b": "172.16.0.4", "c": "172.16.0.3"}
    pinned_clash = [
        svc("a", network={"guest_mac": "AA:FC:AC:10:00:03"}),
        svc("c", network={"guest_ip": "172.16.0.3"}),
    ]
    result = assign_addresses(pinned_clash, "172.16.0.0/24", "172.16.0.1")
    assert result.errors == {
        "c": "service c: MAC AA:FC:AC:10:00:03 derived from 172.16.0.3 is the "
        "network.guest_mac of service a"
    }


def test_macs_are_unicast_locally_administered_and_follow_the_ip() -> None:
    result = assign_addresses([svc("web")], "10.0.0.0/8", "10.0.0.1")
    assert result.assigned["web"].mac == "AA:FC:0A:00:00:02"


@settings(max_examples=15, deadline=None)
@given(st.integers(min_value=0, max_value=5000))
@example(5000)
def test_many_services_never_share_a_mac_or_ip(count: int) -> None:
    services = [svc(n) for n in names(count)]
    result = assign_addresses(services, "172.16.0.0/16", "172.16.0.1")
    assert result.errors == {}
    assigned = list(result.assigned.values())
    assert sorted(result.assigned) == names(count)
    assert len(assigned) == count
    assert len({a.ip for a in assigned}) == count
    assert len({a.mac for a in assigned}) == count
    for name, a in result.assigned.items():
        assert a.tap == tap_name(name)
        assert MAC_FORMAT.fullmatch(a.mac)
        first = int(a.mac[:2], 16)
        assert first & 0b01 == 0  # unicast
        assert first & 0b10 == 0b10  # locally administered


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True),
        unique=True,
        max_size=20,
    ),
    st.sampled_from(
        [
            ("172.16.0.0/24", "172.16.0.1"),
            ("172.16.0.0/28", "172.16.0.14"),
            ("10.0.0.0/29", "10.0.0.3"),
        ]
    ),
    st.randoms(use_true_random=False),
)
def test_same_services_in_any_order_give_the_same_addresses(
    service_names: list[str], net: tuple[str, str], rnd: Any
) -> None:
    services = [svc(n) for n in service_names]
    shuffled = list(services)
    rnd.shuffle(shuffled)
    subnet, gateway = net
    first = assign_addresses(services, subnet, gateway)
    assert assign_addresses(shuffled, subnet, gateway) == first
    # Either an address or an error, never both, never neither.
    assert set(first.assigned) | set(first.errors) == set(service_names)
    assert not set(first.assigned) & set(first.errors)
    assert len({a.ip for a in first.assigned.values()}) == len(first.assigned)


def test_removing_a_service_that_sorts_first_moves_no_other_address() -> None:
    before = assign_addresses([svc("api"), svc("web")], "172.16.0.0/24", "172.16.0.1")
    assert ips(before) == {"api": "172.16.0.2", "web": "172.16.0.3"}

    after = assign_addresses([svc("web")], "172.16.0.0/24", "172.16.0.1", ips(before))
    assert ips(after) == {"web": "172.16.0.3"}
    assert after.assigned["web"] == before.assigned["web"]
    # a new service takes the lowest free address, not one a running VM has
    added = assign_addresses(
        [svc("web"), svc("db"), svc("zed")], "172.16.0.0/24", "172.16.0.1", ips(after)
    )
    assert ips(added) == {"web": "172.16.0.3", "db": "172.16.0.2", "zed": "172.16.0.4"}


@pytest.mark.parametrize(
    ("kept", "why"),
    [
        ("10.0.0.9", "outside the subnet"),
        ("172.16.0.1", "the gateway"),
        ("172.16.0.255", "the broadcast address"),
        ("172.16.0.7", "pinned by another service"),
        ("not-an-ip", "not an address"),
    ],
)
def test_a_kept_address_that_is_no_longer_usable_is_assigned_afresh(
    kept: str, why: str
) -> None:
    services = [svc("web"), svc("pin", network={"guest_ip": "172.16.0.7"})]
    result = assign_addresses(services, "172.16.0.0/24", "172.16.0.1", {"web": kept})
    assert result.errors == {}, why
    assert ips(result) == {"web": "172.16.0.2", "pin": "172.16.0.7"}, why


def test_a_pinned_address_wins_over_what_the_vm_has_now() -> None:
    services = [svc("web", network={"guest_ip": "172.16.0.9"})]
    result = assign_addresses(
        services, "172.16.0.0/24", "172.16.0.1", {"web": "172.16.0.3"}
    )
    assert ips(result) == {"web": "172.16.0.9"}


def test_two_services_recorded_with_one_address_keep_it_once() -> None:
    kept = {"a": "172.16.0.5", "b": "172.16.0.5"}
    result = assign_addresses([svc("a"), svc("b")], "172.16.0.0/24", "172.16.0.1", kept)
    assert ips(result) == {"a": "172.16.0.5", "b": "172.16.0.2"}
