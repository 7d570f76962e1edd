"""The enricher's input: service specs (``services/*.yaml``) and ``defaults.yaml``.

Everything but a service's name and image may come from defaults; the merged result
is validated again as a :class:`~nodeagent.spec.node.ServiceConfig`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidatorFunctionWrapHandler, model_validator

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

    ``health_check: false`` turns off a health check inherited from defaults.
    """

    port_forwards: tuple[PortForward, ...] = ()
    links: tuple[Link, ...] = ()
    _health_check_off: bool = PrivateAttr(default=False)

    @model_validator(mode="wrap")
    @classmethod
    def _health_check_false(
        cls, data: Any, handler: ValidatorFunctionWrapHandler
    ) -> ServiceSpec:
        off = isinstance(data, Mapping) and data.get("health_check") is False
        if off:
            data = {k: v for k, v in data.items() if k != "health_check"}
        spec: ServiceSpec = handler(data)
        spec._health_check_off = off
        return spec

    @property
    def health_check_off(self) -> bool:
        """True when the spec says ``health_check: false``."""
        return self._health_check_off
