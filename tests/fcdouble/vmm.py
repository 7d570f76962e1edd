"""The VMM state machine behind the double's API: routes, phases, messages.

Messages and phase rules follow Firecracker 1.16.1 as described in
``shared/reference/firecracker-behaviour.md`` (sections 1.3, 1.5 and 1.6).
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.fcdouble import schema
from tests.fcdouble.guest import Guest, GuestBackend, GuestBootError
from tests.fcdouble.tap import attach_error

VERSION = "1.16.1"
AFTER_START = "The requested operation is not supported after starting the microVM."
BEFORE_START = "The requested operation is not supported before starting the microVM."
NO_KERNEL = "Start microvm error: Cannot start microvm without kernel configuration."
BAD_ID = "API Resource IDs can only contain alphanumeric characters and underscores."
ENOENT = "No such file or directory (os error 2)"
RESOURCE_ID = re.compile(r"[A-Za-z0-9_]+")
MAC = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}")
MACHINE_DEFAULTS: dict[str, Any] = {
    "vcpu_count": 1,
    "mem_size_mib": 128,
    "smt": False,
    "track_dirty_pages": False,
    "huge_pages": "None",
}


class Fault(Exception):
    """A refused request: status and JSON body, like Firecracker's answer."""

    def __init__(self, message: str, status: int = 400, key: str = "fault_message"):
        super().__init__(message)
        self.status = status
        self.body = {key: message}


@dataclass
class Reply:
    """What the API answers: a status and an optional JSON body."""

    status: int
    body: Any = None


Handler = Callable[[str, Any, bytes], Reply]


class Vmm:
    """One microVM: pre-boot configuration, InstanceStart, and the running guest."""

    def __init__(
        self,
        instance_id: str,
        backend: GuestBackend,
        faults: dict[str, str],
        on_guest_exit: Callable[[int], None],
        resolve_path: Callable[[str], str] = lambda path: path,
    ):
        self.instance_id = instance_id
        # Maps a path the API names to the file it means (differs in a jail).
        self.resolve_path = resolve_path
        self.backend = backend
        self.faults = faults
        self.on_guest_exit = on_guest_exit
        self.started = False
        self.machine = dict(MACHINE_DEFAULTS)
        self.boot_source: dict[str, Any] | None = None
        self.drives: dict[str, dict[str, Any]] = {}
        self.ifaces: dict[str, dict[str, Any]] = {}
        self.guest: Guest | None = None
        self.routes: dict[tuple[str, str], Handler] = {
            ("GET", ""): self.get_info,
            ("GET", "version"): lambda *_: Reply(200, {"firecracker_version": VERSION}),
            ("GET", "machine-config"): lambda *_: Reply(200, dict(self.machine)),
            ("GET", "vm"): self.get_vm_config,
            ("PUT", "machine-config"): self.put_machine_config,
            ("PUT", "boot-source"): self.put_boot_source,
            ("PUT", "drives"): self.put_drive,
            ("PUT", "network-interfaces"): self.put_iface,
            ("PUT", "logger"): self.put_simple("Logger"),
            ("PUT", "metrics"): self.put_simple("Metrics"),
            ("PUT", "actions"): self.put_action,
            ("PATCH", "drives"): self.post_boot_only("PartialDrive"),
            ("PATCH", "network-interfaces"): self.post_boot_only(
                "PartialNetworkInterface"
            ),
        }

    def handle(self, method: str, path: str, raw: bytes) -> Reply:
        """Answer one request like Firecracker would."""
        segments = path.split("?")[0].strip("/").split("/")
        first = segments[0]
        try:
            route = self.routes.get((method, first))
            if route is None or (first == "vm" and segments[1:] != ["config"]):
                raise Fault(f"Invalid request method and/or path: {method} {first}.")
            body = self._body(method, raw)
            return route(path, body, raw)
        except Fault as fault:
            return Reply(fault.status, fault.body)

    def _body(self, method: str, raw: bytes) -> Any:
        if method == "GET":
            if raw:
                raise Fault("GET request cannot have a body.")
            return None
        if not raw:
            raise Fault(f"Empty {method} request.")
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise Fault(f"{schema.SERDE_PREFIX}{exc}.") from exc

    # -- helpers ------------------------------------------------------------

    def _validate(self, definition: str, body: Any, raw: bytes) -> None:
        message = schema.check(definition, body, raw)
        if message is not None:
            raise Fault(message)

    def _pre_boot(self) -> None:
        if self.started:
            raise Fault(AFTER_START)

    def _injected(self, key: str) -> None:
        if key in self.faults:
            raise Fault(self.faults[key])

    def _resource_id(self, path: str) -> str:
        parts = path.strip("/").split("/")
        ident = parts[1] if len(parts) > 1 else ""
        if not ident:
            raise Fault("The ID cannot be empty.")
        if not RESOURCE_ID.fullmatch(ident):
            raise Fault(BAD_ID)
        return ident

    # -- GET ----------------------------------------------------------------

    def get_info(self, path: str, body: Any, raw: bytes) -> Reply:
        """``GET /``: InstanceInfo."""
        state = "Running" if self.started else "Not started"
        info = {
            "id": self.instance_id,
            "state": state,
            "vmm_version": VERSION,
            "app_name": "Firecracker",
        }
        return Reply(200, info)

    def full_config(self) -> dict[str, Any]:
        """The ``GET /vm/config`` document, with explicit nulls like Firecracker."""
        boot = None
        if self.boot_source is not None:
            boot = {"initrd_path": None, "boot_args": None, **self.boot_source}
        drives = [
            {
                "drive_id": d["drive_id"],
                "partuuid": d.get("partuuid"),
                "is_root_device": d["is_root_device"],
                "cache_type": d.get("cache_type", "Unsafe"),
                "is_read_only": d.get("is_read_only", False),
                "path_on_host": d.get("path_on_host"),
                "rate_limiter": d.get("rate_limiter"),
                "io_engine": d.get("io_engine", "Sync"),
                "socket": d.get("socket"),
            }
            for d in self.drives.values()
        ]
        ifaces = [
            {
                "iface_id": n["iface_id"],
                "host_dev_name": n["host_dev_name"],
                "guest_mac": n["guest_mac"].lower() if "guest_mac" in n else None,
                "mtu": n.get("mtu"),
                "rx_rate_limiter": n.get("rx_rate_limiter"),
                "tx_rate_limiter": n.get("tx_rate_limiter"),
            }
            for n in self.ifaces.values()
        ]
        nulls = ("balloon", "cpu-config", "logger", "metrics", "mmds-config")
        return {
            **dict.fromkeys(nulls),
            "drives": drives,
            "boot-source": boot,
            "machine-config": dict(self.machine),
            "network-interfaces": ifaces,
            "vsock": None,
            "entropy": None,
        }

    def get_vm_config(self, path: str, body: Any, raw: bytes) -> Reply:
        """``GET /vm/config``."""
        return Reply(200, self.full_config())

    # -- pre-boot configuration ---------------------------------------------

    def put_machine_config(self, path: str, body: Any, raw: bytes) -> Reply:
        """Full replace: fields left out go back to their defaults."""
        self._pre_boot()
        self._validate("MachineConfiguration", body, raw)
        vcpus = body["vcpu_count"]
        if vcpus < 1 or vcpus > 32 or (body.get("smt") and vcpus > 1 and vcpus % 2):
            raise Fault(schema.VCPU_MESSAGE)
        if body["mem_size_mib"] <= 0:
            raise Fault(
                "Machine config error: The memory size (MiB) is either 0, or not a"
                " multiple of the configured page size."
            )
        self._injected("machine-config")
        self.machine = {**MACHINE_DEFAULTS, **body}
        return Reply(204)

    def put_boot_source(self, path: str, body: Any, raw: bytes) -> Reply:
        """Opens the kernel and initrd now, as Firecracker does."""
        self._pre_boot()
        self._validate("BootSource", body, raw)
        if not os.path.isfile(self.resolve_path(body["kernel_image_path"])):
            raise Fault(
                f"Boot source error: The kernel file cannot be opened: {ENOENT}"
            )
        initrd = body.get("initrd_path")
        if initrd is not None and not os.path.isfile(self.resolve_path(initrd)):
            raise Fault(
                "Boot source error: The initrd file cannot be opened due to invalid"
                f" path or invalid permissions. {ENOENT}"
            )
        self._injected("boot-source")
        self.boot_source = dict(body)
        return Reply(204)

    def put_drive(self, path: str, body: Any, raw: bytes) -> Reply:
        """A virtio block device; the same id replaces the drive."""
        ident = self._resource_id(path)
        self._validate("Drive", body, raw)
        if body["drive_id"] != ident:
            raise Fault("The id from the path does not match the id from the body!")
        if self.started:
            raise Fault("PCI is not enabled")
        prefix = "Drive config error: Unable to create the virtio block device: "
        host_path = body.get("path_on_host")
        if host_path is None and body.get("socket") is None:
            raise Fault(f"{prefix}Invalid block config.")
        if host_path is not None and not os.path.isfile(self.resolve_path(host_path)):
            raise Fault(
                f"{prefix}Virtio backend error: Error manipulating the backing file:"
                f" {ENOENT} {host_path}"
            )
        other_root = any(
            d["is_root_device"] for i, d in self.drives.items() if i != ident
        )
        if body["is_root_device"] and other_root:
            raise Fault("Drive config error: A root block device already exists!")
        self._injected("drives")
        self.drives[ident] = dict(body)
        return Reply(204)

    def put_iface(self, path: str, body: Any, raw: bytes) -> Reply:
        """A virtio net device on a TAP; the old one with this id goes first."""
        ident = self._resource_id(path)
        self._validate("NetworkInterface", body, raw)
        if body["iface_id"] != ident:
            raise Fault(
                f"The id from the path [{ident}] does not match the id from the body"
                f" [{body['iface_id']}]!"
            )
        if self.started:
            raise Fault("PCI is not enabled")
        mac = body.get("guest_mac")
        if mac is not None and not MAC.fullmatch(mac):
            raise Fault(schema._serde(f"invalid value: string {json.dumps(mac)}", raw))
        self.ifaces.pop(ident, None)
        prefix = "Network config error: "
        if len(body["host_dev_name"].encode()) > 15:
            raise Fault(
                f"{prefix}Could not create the network device: Open tap device"
                " failed: Invalid interface name"
            )
        macs = {n.get("guest_mac", "").lower() for n in self.ifaces.values()}
        if mac is not None and mac.lower() in macs:
            raise Fault(f"{prefix}The MAC address is already in use: {mac.lower()}")
        refused = attach_error(body["host_dev_name"])
        if refused is not None:
            raise Fault(f"{prefix}Could not create the network device: {refused}")
        self._injected("network-interfaces")
        self.ifaces[ident] = dict(body)
        return Reply(204)

    def put_simple(self, definition: str) -> Handler:
        """A pre-boot resource the double only validates (logger, metrics)."""
        key = definition.lower()

        def put(path: str, body: Any, raw: bytes) -> Reply:
            self._pre_boot()
            self._validate(definition, body, raw)
            self._injected(key)
            return Reply(204)

        return put

    def post_boot_only(self, definition: str) -> Handler:
        """A PATCH that is refused before boot and accepted (as a no-op) after."""

        def patch(path: str, body: Any, raw: bytes) -> Reply:
            self._resource_id(path)
            self._validate(definition, body, raw)
            if not self.started:
                raise Fault(BEFORE_START)
            return Reply(204)

        return patch

    # -- actions ------------------------------------------------------------

    def put_action(self, path: str, body: Any, raw: bytes) -> Reply:
        """InstanceStart, SendCtrlAltDel and FlushMetrics."""
        self._validate("InstanceActionInfo", body, raw)
        action = body["action_type"]
        if action == "InstanceStart":
            self._pre_boot()
            if self.boot_source is None:
                raise Fault(NO_KERNEL)
            self._injected(action)
            try:
                self._start()
            except GuestBootError as exc:
                # Firecracker stays in the pre-boot phase after a failed start.
                raise Fault(f"Start microvm error: {exc}") from exc
            return Reply(204)
        if not self.started:
            raise Fault(BEFORE_START)
        self._injected(action)
        if action == "SendCtrlAltDel" and self.guest is not None:
            self.guest.ctrl_alt_del()
        return Reply(204)

    def _start(self) -> None:
        self.guest = self.backend.boot(self.full_config())
        self.started = True
        guest = self.guest
        # The VMM lives exactly as long as its guest.
        threading.Thread(
            target=lambda: self.on_guest_exit(guest.wait()), daemon=True
        ).start()
