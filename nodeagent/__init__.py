"""Firework node agent: runs services in Firecracker microVMs on one host.

This package must never import Django: it is installed on KVM hosts on its own.
"""

__version__ = "0.1.0"
