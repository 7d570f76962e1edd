"""The enricher's input: service specs (``services/*.yaml``) and ``defaults.yaml``.

Everything but a service's name and image may come from defaults; the merged result
is validated again as a :class:`~nodeagent.spec.node.ServiceConfig`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from nodeagent.spec.fields import (
    AbsPath,
    Duration,
    EnvKey,
    HttpPath,
    KernelArgs,
    MemoryMb,
    NodeName,
    Port,
    Retries,
    ScalarText,
    ServiceName,
    StrictBool,
    VCpus,
)
from nodeagent.spec.node import Link, Model, PortForward


class HealthCheckSpec(Model):
    """A health check as written: every field may come from defaults instead."""

    type: Literal["http", "tcp"] | None = None
    port: Port | None = None
    path: HttpPath | None = None
    interval: Duration | None = None
    timeout: Duration | None = None
    retries: Retries | None = None


class Defaults(Model):
    """``defaults.yaml``: values every service gets unless it sets its own."""

    node_type: NodeName | None = None
    kernel: AbsPath | None = None
    initrd: AbsPath | None = None
    vcpus: VCpus | None = None
    memory_mb: MemoryMb | None = None
    kernel_args: KernelArgs | None = None
    network: StrictBool | None = None
    env: dict[EnvKey, ScalarText] = Field(default_factory=dict)
    health_check: HealthCheckSpec | None = None
    metadata: dict[ScalarText, ScalarText] = Field(default_factory=dict)


class _Identity(Model):
    name: ServiceName
    image: AbsPath


# Bases in this order put name and image first, so errors read in table order.
class ServiceSpec(Defaults, _Identity):
    """``services/<name>.yaml``: one service as the ops team writes it.

    ``health_check: false`` turns off a health check inherited from defaults; see
    :func:`split_health_check_off`.
    """

    port_forwards: tuple[PortForward, ...] = ()
    links: tuple[Link, ...] = ()


def split_health_check_off(data: Mapping[str, Any]) -> tuple[Mapping[str, Any], bool]:
    """Strip ``health_check: false`` from a raw spec; say whether it was there."""
    if data.get("health_check") is False:
        return {k: v for k, v in data.items() if k != "health_check"}, True
    return data, False
