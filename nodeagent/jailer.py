"""The Firecracker jailer: its argv, the chroot of a service, what goes inside.

Under the jailer, Firecracker runs chrooted in
``<chroot_base>/<exec name>/<service>/root`` as an unprivileged uid:gid, so every
file the API names must be inside that root, owned by that uid, and named by
its in-jail path (``/vmlinux``). The agent runs the jailer without
``--daemonize`` and without ``--new-pid-ns``: the jailer then execs Firecracker
in place, so the pid the agent spawned *is* the VMM, the agent stays its
parent, and SIGTERM still reaches it.

The jailer never cleans up after itself, and refuses to start over a pid file
left by an earlier run, so :meth:`Jailer.prepare` and :meth:`Jailer.remove`
clear the jail of a service, but never while a VMM of that service lives in it.
"""

from __future__ import annotations

import copy
import errno
import itertools
import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodeagent.spec.fields import DNS_LABEL

if TYPE_CHECKING:
    from nodeagent.config import AgentConfig

log = logging.getLogger(__name__)

# The socket Firecracker binds, as seen inside the chroot (its default path).
API_SOCK = "/run/firecracker.socket"


class JailerError(Exception):
    """A service's jail could not be prepared or removed; the message says why."""


@dataclass(frozen=True)
class Jailer:
    """How to run Firecracker under the jailer, and where its jails live.

    ``exec_file`` is the Firecracker binary the jailer copies into each jail.
    The jailer resolves symlinks in it, and the resolved file's name names the
    jail's parent directory and the pid file.
    """

    jailer_bin: str
    exec_file: str
    uid: int
    gid: int
    chroot_base: str

    @classmethod
    def from_config(cls, config: AgentConfig) -> Jailer | None:
        """The agent's jailer, or None when ``jailer_bin`` is not configured."""
        if config.jailer_bin is None:
            return None
        return cls(
            jailer_bin=config.jailer_bin,
            exec_file=config.firecracker_bin,
            uid=config.jailer_uid,
            gid=config.jailer_gid,
            chroot_base=config.jailer_chroot_base,
        )

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Jailer:
        """Rebuild a jailer from :meth:`record`; raises KeyError or ValueError."""
        return cls(
            jailer_bin=str(record["jailer_bin"]),
            exec_file=str(record["exec_file"]),
            uid=int(record["uid"]),
            gid=int(record["gid"]),
            chroot_base=str(record["chroot_base"]),
        )

    def record(self) -> dict[str, Any]:
        """What ``state.json`` keeps so that a later stop finds the same jail.

        The exec file is stored resolved: after an upgrade moves a symlink to a
        new binary, the running VMM's jail still carries the old name.
        """
        return {**asdict(self), "exec_file": os.path.realpath(self.exec_file)}

    @property
    def exec_name(self) -> str:
        """The name of the jail's parent directory, as the jailer derives it."""
        return os.path.basename(os.path.realpath(self.exec_file))

    def jail_dir(self, service: str) -> Path:
        """``<chroot_base>/<exec name>/<service>``: everything one jail holds."""
        if not DNS_LABEL.fullmatch(service):
            raise JailerError(f"service {service}: not a valid service name")
        if not os.path.isabs(self.chroot_base):
            raise JailerError(
                f"service {service}: jailer chroot base {self.chroot_base} is not"
                " an absolute path"
            )
        if self.exec_name in ("", ".", ".."):
            raise JailerError(
                f"service {service}: {self.exec_file} does not name a binary"
            )
        return Path(self.chroot_base) / self.exec_name / service

    def root(self, service: str) -> Path:
        """The chroot of the service: ``/`` for its Firecracker."""
        return self.jail_dir(service) / "root"

    def socket_path(self, service: str) -> str:
        """The host path of the API socket Firecracker binds inside the jail."""
        return str(self.root(service) / API_SOCK.lstrip("/"))

    def pid_file(self, service: str) -> Path:
        """Where the jailer writes the VMM's pid (and refuses to overwrite it)."""
        return self.root(service) / f"{self.exec_name}.pid"

    def argv(self, service: str) -> list[str]:
        """The jailer command line; every value is a separate token.

        The jailer's parser rejects ``--flag=value``. Firecracker's own
        arguments follow ``--`` and name in-jail paths; ``--id`` must not be
        repeated there because the jailer already passes it.
        """
        self.jail_dir(service)  # validates the id before it reaches a command line
        return [
            self.jailer_bin,
            "--id",
            service,
            "--exec-file",
            self.exec_file,
            "--uid",
            str(self.uid),
            "--gid",
            str(self.gid),
            "--chroot-base-dir",
            self.chroot_base,
            "--",
            "--api-sock",
            API_SOCK,
        ]

    def prepare(self, service: str, api: Mapping[str, Any]) -> dict[str, Any]:
        """Give the service a fresh jail holding its files; return the jailed API.

        A jail left by a dead run is removed first. Kernel, initrd and drives
        are hard-linked in (copied when they live on another filesystem) and
        chowned to uid:gid. A hard link shares the inode, so the host file
        changes owner too and the guest's writes land in the host image, just
        as without the jailer. A copy, however, is deleted with the jail.
        """
        base = Path(self.chroot_base)
        if not base.is_dir():
            raise JailerError(
                f"service {service}: jailer chroot base {base} does not exist"
            )
        self.remove(service)
        root = self.root(service)
        root.mkdir(mode=0o700, parents=True)
        jailed = copy.deepcopy(dict(api))
        names = self._names(_resource_paths(jailed))
        try:
            for host_path, name in names.items():
                self._put(service, host_path, root / name)
        except JailerError:
            self.discard(service)
            raise
        _rewrite_paths(jailed, {path: f"/{name}" for path, name in names.items()})
        return jailed

    def remove(self, service: str) -> None:
        """Delete the jail of a service, and nothing outside it.

        Refuses while the pid in the jail's pid file is still a VMM of this
        service: its files are in use.
        """
        jail = self.jail_dir(service)
        pid = self.occupant(service)
        if pid is not None:
            raise JailerError(f"service {service}: jail {jail} is in use by pid {pid}")
        try:
            shutil.rmtree(jail)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise JailerError(
                f"service {service}: cannot remove jail {jail}: {exc}"
            ) from exc
        log.info("jail removed service=%s path=%s", service, jail)

    def discard(self, service: str) -> None:
        """Remove the jail after a failed start, logging instead of raising.

        The start's own error is the one worth reporting.
        """
        try:
            self.remove(service)
        except JailerError as exc:
            log.warning("jail not removed service=%s error=%s", service, exc)

    def occupant(self, service: str) -> int | None:
        """The live VMM of this service named by the jail's pid file, if any."""
        try:
            pid = int(self.pid_file(service).read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid > 1 and _runs_as(pid, service) else None

    def _names(self, paths: Iterable[str]) -> dict[str, str]:
        """An in-jail file name per host path; equal base names get a suffix."""
        taken = {"dev", "run", self.exec_name, f"{self.exec_name}.pid"}
        names: dict[str, str] = {}
        for path in paths:
            if path in names:
                continue
            host = Path(path)
            candidates = itertools.chain(
                [host.name],
                (f"{host.stem}-{n}{host.suffix}" for n in itertools.count(2)),
            )
            name = next(c for c in candidates if c not in taken)
            taken.add(name)
            names[path] = name
        return names

    def _put(self, service: str, source: str, target: Path) -> None:
        try:
            try:
                os.link(source, target)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                shutil.copy2(source, target)
            os.chown(target, self.uid, self.gid)
        except OSError as exc:
            raise JailerError(
                f"service {service}: cannot put {source} into the jail:"
                f" {exc.strerror or exc}"
            ) from exc


def _resource_paths(api: Mapping[str, Any]) -> list[str]:
    """Host paths the API bodies name: kernel, initrd, then every drive."""
    boot = api.get("boot-source", {})
    paths = [boot[key] for key in ("kernel_image_path", "initrd_path") if key in boot]
    paths += [d["path_on_host"] for d in api.get("drives", []) if "path_on_host" in d]
    return [str(p) for p in paths]


def _rewrite_paths(api: dict[str, Any], jailed: Mapping[str, str]) -> None:
    boot = api.get("boot-source", {})
    for key in ("kernel_image_path", "initrd_path"):
        if key in boot:
            boot[key] = jailed[boot[key]]
    for drive in api.get("drives", []):
        if "path_on_host" in drive:
            drive["path_on_host"] = jailed[drive["path_on_host"]]


def _runs_as(pid: int, service: str) -> bool:
    """The pid is alive (not a zombie) and was started with ``--id <service>``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if stat[stat.rindex(")") + 2] in "ZX":
        return False
    pairs = itertools.pairwise(argv)
    return any(a == b"--id" and b == service.encode() for a, b in pairs)


__all__ = ["API_SOCK", "Jailer", "JailerError"]
