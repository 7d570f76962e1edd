"""``firework-agent run`` and ``firework-agent plan``."""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from nodeagent import adopt
from nodeagent.agent import Agent
from nodeagent.config import AgentConfig
from nodeagent.httpapi import start_api
from nodeagent.lastgood import LastGood
from nodeagent.reconcile import RunningVM
from nodeagent.reconcile import plan as make_plan
from nodeagent.resolve import resolve
from nodeagent.stores import (
    ConfigInvalid,
    Desired,
    RawConfig,
    StoreError,
    fetch_raw,
    parse_desired,
    store_for,
)
from nodeagent.stores.base import check_size

log = logging.getLogger("nodeagent")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_LEVELS = {"debug": "DEBUG", "info": "INFO", "warn": "WARNING", "error": "ERROR"}


def run(config: AgentConfig, *, once: bool = False, stop_vms: bool = False) -> int:
    """Run the agent until SIGTERM or SIGINT (or one tick with ``once``).

    Exit status: 0, or 1 when ``once`` and the tick left something failed, or
    2 when the store cannot even be set up (an unreadable secret file).
    """
    logging.basicConfig(level=LOG_LEVELS[config.log_level], format=LOG_FORMAT)
    if config.log_level != "debug":
        # one line per request: every status report, every tick, is noise
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        agent = Agent(config)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping after this tick", signal.Signals(signum).name)
        stop.set()
        agent.wake()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    api = (
        start_api(config.api_listen_addr, agent.status)
        if config.api_listen_addr
        else None
    )
    log.info(
        "agent started node=%s labels=%s store=%s state_dir=%s",
        config.node_name,
        ",".join(config.labels),
        config.store_type,
        config.state_dir,
    )
    try:
        report = agent.run(stop, once=once)
    finally:
        agent.shutdown(stop_vms=stop_vms)
        if api is not None:
            api.close()
    return 1 if once and not report.ok else 0


def plan(config: AgentConfig, node_configs: Sequence[Path]) -> int:
    """Print the resolved services and the actions the agent would take, as JSON.

    Reads the store (or ``node_configs``) and the state directory; writes
    nothing, signals nothing, creates no network device.
    """
    try:
        desired, source = _desired_for_plan(config, node_configs)
    except (StoreError, ConfigInvalid, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from nodeagent.netsetup import (  # pyroute2: only for plan and run
        ipv6_rules_for,
        rules_for,
    )

    state_dir = Path(config.state_dir)
    addresses = adopt.recorded_addresses(state_dir)
    resolved = resolve(
        desired.config.services, config.vm_subnet, config.vm_gateway, addresses
    )
    actual = _actual_from_disk(state_dir)
    keep = resolved.errors.keys()
    result = make_plan(
        [p.service for p in resolved.prepared.values()],
        [found for found in actual if found.name not in keep],
        specs={name: p.spec for name, p in resolved.prepared.items()},
    )
    document: dict[str, Any] = {
        "node": config.node_name,
        "source": source,
        "revisions": desired.revisions,
        "services": [p.as_dict() for p in resolved.prepared.values()],
        "errors": [
            {"service": name, "error": error}
            for name, error in sorted(resolved.errors.items())
        ],
        "actions": [a.as_dict() for a in result.actions],
        "network": {
            "managed": config.enable_network_setup,
            "bridge": config.vm_bridge,
            "subnet": config.vm_subnet,
            "gateway": config.vm_gateway,
            "isolation": config.vm_isolation,
            "rules": rules_for(config, resolved.prepared).lines(),
            "ipv6_rules": ipv6_rules_for(config),
        },
    }
    json.dump(document, sys.stdout, indent=2)
    print()
    return 0


def _desired_for_plan(
    config: AgentConfig, node_configs: Sequence[Path]
) -> tuple[Desired, str]:
    if node_configs:
        raw = {}
        for path in node_configs:
            data = path.read_bytes()
            check_size(str(path), len(data))
            raw[path.stem] = RawConfig(data, hashlib.sha256(data).hexdigest()[:12])
        return parse_desired(raw), "files"
    try:
        return parse_desired(fetch_raw(store_for(config), config.labels)), "store"
    except (StoreError, ConfigInvalid) as exc:
        cached = LastGood(config.state_dir).load(config.labels)
        if cached is None:
            raise
        print(f"warning: using the last good config: {exc}", file=sys.stderr)
        return cached, "last_good"


def _actual_from_disk(state_dir: Path) -> list[RunningVM]:
    """The VMs recorded under ``state_dir``, as a freshly started agent sees them."""
    actual = []
    for found in adopt.scan(state_dir):
        state = found.state
        if state is None or found.kind in ("broken", "foreign"):
            continue
        alive = found.kind == "adoptable" and not found.drift
        actual.append(
            RunningVM(
                found.service,
                state.spec_hash,
                alive,
                state.pid if alive else None,
                state.spec,
            )
        )
    return actual
