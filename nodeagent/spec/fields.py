"""Field types shared by service specs, defaults and node configs.

Every rule lives here once, so the enricher and the agent reject the same input
with the same words. The checks are pure functions of one string and the same
values (kernel paths, env keys) recur in every service, so results are cached.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Strict

from nodeagent.durations import parse_duration

DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
IFACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
MAC = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}")
SCHEME = re.compile(r"[a-z][a-z0-9+.-]{0,31}")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
NOT_PRINTABLE_ASCII = re.compile(r"[^ -~]")
KERNEL_CMDLINE_MAX = 2048


@functools.lru_cache(maxsize=4096)
def _dns_name(value: str) -> str:
    labels = value.split(".")
    if len(value) > 253 or not all(DNS_LABEL.fullmatch(label) for label in labels):
        raise ValueError(
            f"{value!r} is not a DNS name (dot-separated labels of lowercase "
            "letters, digits and '-')"
        )
    return value


@functools.lru_cache(maxsize=4096)
def _abs_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"must be an absolute path, got {value!r}")
    if ".." in value.split("/"):
        raise ValueError(f"must not contain '..', got {value!r}")
    if CONTROL.search(value):
        raise ValueError("must not contain control characters")
    if len(value) > 1024:
        raise ValueError("must be at most 1024 characters")
    return value


def _matching(pattern: re.Pattern[str], what: str) -> AfterValidator:
    """A check that the whole value matches ``pattern``; ``what`` explains it."""

    @functools.lru_cache(maxsize=4096)
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(f"{value!r} is not {what}")
        return value

    return AfterValidator(check)


def _range(low: int, high: int | None) -> AfterValidator:
    def check(value: int) -> int:
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f">= {low}"
            raise ValueError(f"must be {bound}, got {value}")
        return value

    return AfterValidator(check)


@functools.lru_cache(maxsize=4096)
def _duration(value: str) -> str:
    if parse_duration(value) <= 0:
        raise ValueError(f"must be longer than zero, got {value!r}")
    return value


@functools.lru_cache(maxsize=4096)
def _mac(value: str) -> str:
    if not MAC.fullmatch(value):
        raise ValueError(f"{value!r} is not a MAC address like AA:FC:00:00:00:01")
    if int(value[:2], 16) & 1:
        raise ValueError(f"{value!r} is a multicast MAC address")
    return value.upper()


@functools.lru_cache(maxsize=4096)
def _ipv4(value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 address") from None


@functools.lru_cache(maxsize=4096)
def _http_path(value: str) -> str:
    if not value.startswith("/") or CONTROL.search(value) or " " in value:
        raise ValueError(f"must start with '/' and contain no spaces, got {value!r}")
    return value


@functools.lru_cache(maxsize=4096)
def _kernel_args(value: str) -> str:
    if NOT_PRINTABLE_ASCII.search(value):
        bad = sorted(set(NOT_PRINTABLE_ASCII.findall(value)))
        raise ValueError(f"must be printable ASCII, found {''.join(bad)!r}")
    if len(value) > KERNEL_CMDLINE_MAX:
        raise ValueError(
            f"is {len(value)} characters, the kernel accepts at most "
            f"{KERNEL_CMDLINE_MAX}"
        )
    return value


def scalar_to_str(value: Any) -> Any:
    """YAML scalars (numbers, booleans, dates) as the strings a user meant."""
    if type(value) is str:
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, datetime.date):
        return value.isoformat()
    return value


StrictStr = Annotated[str, Strict()]
ServiceName = Annotated[
    StrictStr,
    _matching(
        DNS_LABEL,
        "a DNS label (lowercase letters, digits and '-', at most 63 characters, "
        "starting and ending with a letter or digit)",
    ),
]
NodeName = Annotated[StrictStr, AfterValidator(_dns_name)]
AbsPath = Annotated[StrictStr, AfterValidator(_abs_path)]
VCpus = Annotated[int, Strict(), _range(1, 32)]
MemoryMb = Annotated[int, Strict(), _range(128, None)]
Port = Annotated[int, Strict(), _range(1, 65535)]
Retries = Annotated[int, Strict(), _range(1, 100)]
Duration = Annotated[StrictStr, AfterValidator(_duration)]
EnvKey = Annotated[
    StrictStr,
    _matching(ENV_KEY, "a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)"),
]
ScalarText = Annotated[StrictStr, BeforeValidator(scalar_to_str)]
Interface = Annotated[
    StrictStr,
    _matching(
        IFACE,
        "a valid interface name (at most 15 characters: letters, digits, '_', "
        "'.' and '-')",
    ),
]
Mac = Annotated[StrictStr, AfterValidator(_mac)]
IPv4 = Annotated[StrictStr, AfterValidator(_ipv4)]
HttpPath = Annotated[StrictStr, AfterValidator(_http_path)]
Scheme = Annotated[StrictStr, _matching(SCHEME, "a URL scheme like http or postgres")]
KernelArgs = Annotated[StrictStr, AfterValidator(_kernel_args)]
StrictBool = Annotated[bool, Strict()]
