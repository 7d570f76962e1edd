"""The enricher's input: service specs (``services/*.yaml``) and ``defaults.yaml``.

Everything but a service's name and image may come from defaults; the merged result
is validated again as a :class:`~nodeagent.spec.node.ServiceConfig`.
"""

from __future__ import annotations

from typing import Literal

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


class ServiceSpec(Defaults):
    """``services/<name>.yaml``: one service as the ops team writes it.

    ``health_check: false`` turns off a health check inherited from defaults.
    """

    name: ServiceName
    image: AbsPath
    port_forwards: tuple[PortForward, ...] = ()
    links: tuple[Link, ...] = ()
    health_check: HealthCheckSpec | Literal[False] | None = None  # type: ignore[assignment]
