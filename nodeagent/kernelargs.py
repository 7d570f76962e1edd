"""The guest's kernel command line: its network, its env and its links.

Pure functions, in the order the agent uses them: :func:`resolve_links` turns links
into env values, :func:`encode_env` makes env safe for the kernel command line, and
:func:`build_kernel_args` assembles and checks the whole line. The guest init
(``fc-init``) decodes ``firework.env.*`` and ``firework.env64.*`` again.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping

from nodeagent.addressing import Addressing, Assigned
from nodeagent.spec.fields import KERNEL_CMDLINE_MAX
from nodeagent.spec.node import ServiceConfig

# Firecracker appends its own root device (" root=/dev/vda rw", about 20 bytes)
# and may add " pci=off"; the kernel also counts the terminating NUL.
CMDLINE_MARGIN = 64
CMDLINE_BUDGET = KERNEL_CMDLINE_MAX - CMDLINE_MARGIN

ENV_PREFIX = "firework.env."
ENV64_PREFIX = "firework.env64."
INIT_SEPARATOR = "--"
# Quotes and backslashes change how the kernel splits its command line; space
# ends an argument. Everything else printable ASCII passes through unchanged.
_RAW_SAFE = frozenset(chr(c) for c in range(0x21, 0x7F)) - set("\"'\\")


def resolve_links(
    services: Iterable[ServiceConfig], addressing: Addressing
) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """The env of every service with its links resolved, and link errors.

    A link becomes ``<protocol>://<target guest IP>:<port>`` and wins over a static
    env value of the same name. A service with a broken link gets an error and no
    env, so it cannot be started with half of what it needs.
    """
    services = list(services)
    by_name = {s.name: s for s in services}
    envs: dict[str, dict[str, str]] = {}
    errors: dict[str, str] = {}
    for service in services:
        env = dict(service.env)
        problems: list[str] = []
        for i, link in enumerate(service.links):
            target = by_name.get(link.service)
            assigned = addressing.assigned.get(link.service)
            if target is None:
                problems.append(f"links[{i}]: no service {link.service} here")
            elif target.network is None:
                problems.append(f"links[{i}]: {link.service} has no network")
            elif assigned is None:
                problems.append(f"links[{i}]: {link.service} has no address")
            else:
                env[link.env] = f"{link.protocol}://{assigned.ip}:{link.port}"
        if problems:
            errors[service.name] = f"service {service.name}: " + "; ".join(problems)
        else:
            envs[service.name] = env
    return envs, errors


def encode_env(env: Mapping[str, str]) -> list[str]:
    """Kernel arguments carrying ``env``, sorted by key.

    Values of safe characters only go raw (``firework.env.KEY=VALUE``); any other
    goes as unpadded base64url of its UTF-8 (``firework.env64.KEY=...``).
    """
    args: list[str] = []
    for key in sorted(env):
        value = env[key]
        if all(c in _RAW_SAFE for c in value):
            args.append(f"{ENV_PREFIX}{key}={value}")
        else:
            encoded = base64.urlsafe_b64encode(value.encode()).rstrip(b"=")
            args.append(f"{ENV64_PREFIX}{key}={encoded.decode('ascii')}")
    return args


def ip_arg(assigned: Assigned) -> str:
    """The kernel's static network configuration for the guest's eth0."""
    return f"ip={assigned.ip}::{assigned.gateway}:{assigned.netmask}::eth0:off"


def build_kernel_args(
    service_kernel_args: str,
    assigned: Assigned | None,
    env: Mapping[str, str],
    *,
    service: str = "",
) -> str:
    """The guest's full kernel command line (without what Firecracker appends).

    The ``ip=`` argument (unless the spec has its own, which must then carry the
    assigned address) and the env arguments go before a ``--`` token, since
    everything after it is passed to init. Raises ``ValueError`` on an ``ip=``
    mismatch or a line longer than :data:`CMDLINE_BUDGET`.
    """
    label = f"service {service}: " if service else ""
    tokens = split_cmdline(service_kernel_args)
    cut = tokens.index(INIT_SEPARATOR) if INIT_SEPARATOR in tokens else len(tokens)
    kernel, init = tokens[:cut], tokens[cut:]
    own_ips = [t for t in kernel if t.startswith("ip=")]
    added: list[str] = []
    if assigned is not None:
        for own in own_ips:
            address = own[len("ip=") :].split(":", 1)[0]
            if address != assigned.ip:
                raise ValueError(
                    f"{label}kernel_args {own} does not match the assigned "
                    f"guest IP {assigned.ip}"
                )
        if not own_ips:
            added.append(ip_arg(assigned))
    line = " ".join([*kernel, *added, *encode_env(env), *init])
    size = len(line.encode())
    if size > CMDLINE_BUDGET:
        raise ValueError(
            f"{label}kernel command line is {size} bytes, at most {CMDLINE_BUDGET} fit"
        )
    return line


def split_cmdline(line: str) -> list[str]:
    """Split like the kernel does: on spaces, except inside double quotes."""
    tokens: list[str] = []
    current: list[str] = []
    quoted = False
    for char in line:
        if char == '"':
            quoted = not quoted
        if char.isspace() and not quoted:
            if current:
                tokens.append("".join(current))
                current = []
            continue
        current.append(char)
    if current:
        tokens.append("".join(current))
    return tokens
