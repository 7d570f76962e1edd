"""The contract: service specs and defaults (input), node configs (output)."""

from nodeagent.spec.input import Defaults, HealthCheckSpec, ServiceSpec
from nodeagent.spec.node import (
    HealthCheck,
    Link,
    Network,
    NodeConfig,
    PortForward,
    ServiceConfig,
    check_services,
    validate_node_config,
)
from nodeagent.spec.problems import Problem

__all__ = [
    "Defaults",
    "HealthCheck",
    "HealthCheckSpec",
    "Link",
    "Network",
    "NodeConfig",
    "PortForward",
    "Problem",
    "ServiceConfig",
    "ServiceSpec",
    "check_services",
    "validate_node_config",
]
