"""The agent loop: fetch the node config, compare with the VMs, act, report.

Level-triggered: every tick fetches the desired state (an unchanged config costs
a 304 or nothing), looks at every VM it runs and carries out the plan, so a VM
that died is recreated without a new revision. The first tick that has a config
adopts the VMs a previous agent left running.

What the agent never does: stop a VM because the config is unreachable or
invalid (the last good config keeps running, reported as stale), stop a VM of a
service that merely cannot be resolved right now (no address, broken link), or
stop VMs when it exits, unless told to (``--stop-vms``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodeagent import adopt, vm
from nodeagent.config import AgentConfig
from nodeagent.durations import parse_duration
from nodeagent.jailer import Jailer
from nodeagent.lastgood import ConfigSource, LastGood, NoConfig
from nodeagent.reconcile import (
    Action,
    ActionResult,
    RunningVM,
    monitor_spec,
    plan,
    run_actions,
)
from nodeagent.resolve import Prepared, Resolved, resolve
from nodeagent.status import AgentStatus, ServiceState
from nodeagent.stores import ConfigStore, Desired, store_for
from nodeagent.supervisor import Supervisor

if TYPE_CHECKING:
    from nodeagent.images import ImageSync
    from nodeagent.netsetup import NodeNetwork
    from nodeagent.reporter import Reporter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TickReport:
    """What one tick did: the plan's results and the services left failed."""

    results: tuple[ActionResult, ...] = ()
    failed: Mapping[str, str] = field(default_factory=dict)
    revision: str = ""
    stale: bool = False
    no_config: bool = False

    @property
    def ok(self) -> bool:
        """Every action succeeded and no service is failed."""
        return (
            not self.no_config and all(r.ok for r in self.results) and not self.failed
        )


class Agent:
    """One node's agent; :meth:`tick` once, or :meth:`run` until told to stop."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        store: ConfigStore | None = None,
        status: AgentStatus | None = None,
    ) -> None:
        self.config = config
        self.status = status or AgentStatus(config.node_name, config.labels)
        self.source = ConfigSource(
            store if store is not None else store_for(config),
            config.labels,
            LastGood(config.state_dir),
        )
        self.jailer = Jailer.from_config(config)
        # pyroute2 and boto3 are big: loaded only when the node uses them.
        self.network: NodeNetwork | None = None
        if config.enable_network_setup:
            from nodeagent.netsetup import NodeNetwork

            self.network = NodeNetwork(config, self.jailer)
        self.images: ImageSync | None = None
        if config.s3_images_bucket:
            from nodeagent.images import ImageSync

            self.images = ImageSync.from_config(config)
        self.reporter: Reporter | None = None
        if config.control_plane_url:
            from nodeagent.reporter import Reporter  # httpx: only when reporting

            self.reporter = Reporter.from_config(config, self.status)
            if self.reporter is not None:
                self.status.on_change(self.reporter.notify)
        self._wake = threading.Event()
        self.supervisor = Supervisor(config, self.status, self.wake)
        self._image_errors: dict[str, str | None] = {}
        self.state_dir = Path(config.state_dir)
        self.start_timeout = parse_duration(config.vm_start_timeout)
        self.stop_timeout = parse_duration(config.vm_stop_timeout)
        # Written by action threads, one service each; read between phases.
        self._lock = threading.Lock()
        self._vms: dict[str, vm.VMHandle] = {}
        self._monitored: dict[str, dict[str, Any]] = {}
        self._desired: Desired | None = None
        self._resolved = Resolved()
        self._adopted = False
        self._revision = ""

    # -- one tick

    def tick(self) -> TickReport:
        """Fetch, resolve, adopt (first time), plan and act; never raises."""
        started = time.monotonic()
        try:
            return self._tick()
        except Exception:  # the loop must survive anything one tick hits
            log.exception("tick failed")
            return TickReport(failed={"": "tick failed, see the agent log"})
        finally:
            self.status.record_tick(time.monotonic() - started)

    def _tick(self) -> TickReport:
        try:
            snap = self.source.current()
        except NoConfig as exc:
            self.status.set_stale(str(exc))
            log.warning("no config to run: %s", exc)
            return TickReport(no_config=True, stale=True)
        if snap.stale:
            self.status.set_stale(snap.stale_reason, snap.stale_since)
        else:
            self.status.clear_stale()
        if snap.desired is not self._desired:
            self._take(snap.desired)
        if not self._adopted:
            self._adopt()
            self._remove_leftover_taps()
        resolved = self._resolved
        actual = self._actual(skip=resolved.errors.keys())
        result = plan(
            [p.service for p in resolved.prepared.values()],
            actual,
            monitored=self._monitored,
            specs={name: p.spec for name, p in resolved.prepared.items()},
        )
        running = {vm.name for vm in actual if vm.alive}
        extra = self.supervisor.unhealthy_recreates(running, result.actions)
        actions = self.supervisor.gate([*result.actions, *extra])
        self._sync_images(actions)
        results = run_actions(
            actions, self._execute, parallelism=self.config.action_parallelism
        )
        self.supervisor.monitor(resolved.prepared, self._running())
        self._sync_rules()
        for update in result.monitor_updates:
            prepared = resolved.prepared[update.service]
            self._monitored[update.service] = monitor_spec(prepared.service)
            log.info(
                "monitor updated service=%s reason=%s revision=%s",
                update.service,
                update.reason,
                self._revision,
            )
        self._report_failed(resolved.errors)
        self.status.set_revisions(snap.desired.revisions)
        return TickReport(
            tuple(results), dict(resolved.errors), self._revision, snap.stale
        )

    def _take(self, desired: Desired) -> None:
        """A new desired state: resolve it once, not on every tick."""
        self._desired = desired
        self._revision = ",".join(r[:12] for r in desired.revisions.values())
        self._resolved = resolve(
            desired.config.services,
            self.config.vm_subnet,
            self.config.vm_gateway,
            keep=adopt.recorded_addresses(self.state_dir),
        )
        for name in self._resolved.prepared.keys() - self._vms.keys():
            self.status.upsert_service(name, state="stopped", last_error="")
        # A service that left the config without a VM (it never started) has no
        # remove action to take its status with it.
        wanted = self._resolved.prepared.keys() | self._resolved.errors.keys()
        for service in self.status.snapshot().services:
            if service.name not in wanted and service.name not in self._vms:
                self.status.remove_service(service.name)
        for name, error in sorted(self._resolved.errors.items()):
            log.error(
                "service cannot run service=%s revision=%s error=%s",
                name,
                self._revision,
                error,
            )
        log.info(
            "desired state services=%d unresolved=%d revision=%s",
            len(desired.config.services),
            len(self._resolved.errors),
            self._revision,
        )

    def _adopt(self) -> None:
        """Take over VMs a previous agent started; runs once, with the first config."""
        resolved = self._resolved
        report = adopt.adopt(
            self.state_dir,
            {name: p.spec_hash for name, p in resolved.prepared.items()},
            keep=resolved.errors.keys(),
            grace=self.stop_timeout,
        )
        for running in report.adopted:
            state = vm.inspect(vm.vm_dir_for(self.state_dir, running.name))
            if state is None or not state.alive:
                continue  # it died in the meantime: the plan recreates it
            self._vms[running.name] = vm.handle_of(state, self.state_dir)
            self._monitored.pop(running.name, None)  # the plan re-applies these
            self.status.upsert_service(
                running.name,
                state="running",
                pid=state.pid,
                guest_ip=adopt.guest_ip_of(state.spec) or "",
            )
            self.supervisor.adopted(running.name, state.pid)
        for outcome in report.failed:
            self.status.upsert_service(
                outcome.service, state="failed", last_error=outcome.detail
            )
        self._adopted = True
        log.info(
            "adoption done adopted=%d stopped=%d cleaned=%d left=%d failed=%d",
            len(report.adopted),
            len(report.stopped),
            len(report.cleaned),
            len(report.left),
            len(report.failed),
        )

    def _remove_leftover_taps(self) -> None:
        """TAPs of ours that no service uses any more (a crash mid-removal)."""
        if self.network is None:
            return
        keep = {_tap_of(h.spec) for h in self._vms.values()}
        keep |= {
            p.service.network.interface
            for p in self._resolved.prepared.values()
            if p.service.network is not None
        }
        try:
            self.network.remove_leftovers({t for t in keep if t})
        except Exception as exc:  # tidying up must not stop reconciling
            log.error("leftover tap cleanup failed error=%s", exc)

    def _sync_rules(self) -> None:
        if self.network is None:
            return
        try:
            self.network.sync_rules(self._resolved.prepared)
        except Exception as exc:  # the VMs keep running; next tick retries
            log.error("nat rules not applied revision=%s error=%s", self._revision, exc)

    def _actual(self, skip: Any) -> list[RunningVM]:
        """The VMs this agent runs, alive or not; ``skip`` ones are left alone."""
        out = []
        for name, handle in self._vms.items():
            if name in skip:
                continue
            alive = vm.is_running(handle)
            out.append(
                RunningVM(
                    name,
                    handle.spec_hash,
                    alive,
                    handle.pid if alive else None,
                    handle.spec,
                )
            )
        return out

    # -- actions

    def _execute(self, action: Action) -> None:
        name = action.service
        log.info(
            "action kind=%s service=%s reason=%s revision=%s",
            action.kind,
            name,
            action.reason,
            self._revision,
        )
        if action.kind in ("remove", "recreate"):
            self._stop(name, removed=action.kind == "remove")
        if action.kind == "remove":
            self.status.remove_service(name)
            return
        self._start(self._resolved.prepared[name])

    def _stop(self, name: str, *, removed: bool = False) -> None:
        with self._lock:
            handle = self._vms.get(name)
        if handle is None:
            return
        self.supervisor.stopped(name, removed=removed)
        vm.stop(handle, grace=self.stop_timeout, jailer=self.jailer)
        with self._lock:
            self._vms.pop(name, None)
            self._monitored.pop(name, None)
        if self.network is not None:
            self.network.tap_down(_tap_of(handle.spec))

    def _start(self, prepared: Prepared) -> None:
        name = prepared.name
        guest_ip = prepared.assigned.ip if prepared.assigned else ""
        self.status.upsert_service(
            name,
            state=self.supervisor.starting_state(name),
            pid=None,
            guest_ip=guest_ip,
            health_configured=prepared.service.health_check is not None,
        )
        try:
            self._check_images(prepared)
            if self.network is not None:
                self.network.tap_up(prepared.service)
            handle = vm.start(
                prepared.service,
                firecracker_bin=self.config.firecracker_bin,
                state_dir=self.state_dir,
                boot_args=prepared.boot_args,
                socket_timeout=self.start_timeout,
                jailer=self.jailer,
            )
        except Exception as exc:  # whatever it was, the status must say it
            self.status.upsert_service(
                name, state="failed", pid=None, last_error=str(exc)
            )
            log.error(
                "vm start failed service=%s revision=%s error=%s",
                name,
                self._revision,
                exc,
            )
            self.supervisor.start_failed(name)
            raise
        with self._lock:
            self._vms[name] = handle
            self._monitored[name] = monitor_spec(prepared.service)
        self.status.upsert_service(name, pid=handle.pid)
        self.supervisor.started(name, handle.pid)
        log.info(
            "vm running service=%s pid=%s revision=%s",
            name,
            handle.pid,
            self._revision,
        )

    def _running(self) -> set[str]:
        return {name for name, h in self._vms.items() if vm.is_running(h)}

    def _sync_images(self, actions: list[Action]) -> None:
        """Fetch the images of every VM about to start, each image once."""
        if self.images is None:
            return
        paths = []
        for action in actions:
            prepared = self._resolved.prepared.get(action.service)
            if action.kind != "remove" and prepared is not None:
                paths += _images_of(prepared)
        self._image_errors = self.images.sync(paths) if paths else {}

    def _check_images(self, prepared: Prepared) -> None:
        errors = [
            error
            for path in _images_of(prepared)
            if (error := self._image_errors.get(path))
        ]
        if errors:
            raise vm.VMError(f"service {prepared.name}: " + "; ".join(errors))

    def _report_failed(self, errors: Mapping[str, str]) -> None:
        for name, error in errors.items():
            handle = self._vms.get(name)
            # A running VM of a service we cannot resolve now keeps running.
            running = handle is not None and vm.is_running(handle)
            state: ServiceState = "running" if running else "failed"
            self.status.upsert_service(name, state=state, last_error=error)

    # -- the loop

    def wake(self) -> None:
        """Tick now rather than at the next poll (a VM exited, a check failed)."""
        self._wake.set()

    def run(self, stop: threading.Event, *, once: bool = False) -> TickReport:
        """Tick every ``poll_interval``, or when woken, until ``stop`` is set.

        Returns the last tick's report. Call :meth:`wake` after setting
        ``stop`` to end the wait at once.
        """
        if not once:
            self.supervisor.start()
            if self.reporter is not None:
                self.reporter.start()
        report = self.tick()
        self.status.set_phase("running")
        self._reported()
        while not once and not stop.is_set():
            self._wake.wait(self.supervisor.wait_for_restart(self.config.poll_seconds))
            self._wake.clear()
            if not stop.is_set():
                report = self.tick()
                self._reported()
        return report

    def _reported(self) -> None:
        """Let the reporter send the new status (it never blocks the loop)."""
        if self.reporter is not None:
            self.reporter.notify()

    def shutdown(self, *, stop_vms: bool = False) -> None:
        """Leave the VMs running (the default) or stop every one of them."""
        self.status.set_phase("stopping")
        self.supervisor.stop()
        if self.reporter is not None:
            self.reporter.stop()
        if not stop_vms:
            log.info("agent stopping, vms left running count=%d", len(self._vms))
            return
        names = list(self._vms)
        log.info("agent stopping vms count=%d", len(names))
        workers = max(1, min(self.config.action_parallelism, len(names)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for name, error in zip(
                names, pool.map(self._stop_quietly, names), strict=True
            ):
                if error:
                    log.error("vm stop failed service=%s error=%s", name, error)
        if self.network is not None:
            try:
                self.network.teardown()
            except Exception as exc:  # exiting anyway: say so, do not raise
                log.error("nat rules not removed error=%s", exc)

    def _stop_quietly(self, name: str) -> str:
        try:
            self._stop(name)
        except Exception as exc:  # stop the others whatever one does
            return str(exc)
        return ""


def _tap_of(spec: Mapping[str, Any]) -> str | None:
    """The TAP an applied spec's network used, if it had one."""
    network = spec.get("network")
    if isinstance(network, Mapping):
        tap = network.get("interface")
        return tap if isinstance(tap, str) else None
    return None


def _images_of(prepared: Prepared) -> list[str]:
    service = prepared.service
    return [p for p in (service.kernel, service.image, service.initrd) if p]
