"""Who a pid is: the /proc checks that keep the agent from signalling strangers.

A VMM is identified by its pid *and* its start time (clock ticks since boot, from
``/proc/<pid>/stat``): a pid the kernel reused for another process has another
start time. Where the argv is checked too, it must carry the service's ``--id``
and ``--api-sock``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path


def proc_stat(pid: int) -> tuple[str, int] | None:
    """State letter and start time (clock ticks since boot) of a pid."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses; fields follow the last ")".
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def starttime(pid: int) -> int | None:
    """The start time of a pid, None when there is no such process."""
    stat = proc_stat(pid)
    return stat[1] if stat else None


def exists(pid: int) -> bool:
    """Any live process holds the pid (a zombie counts as gone)."""
    if pid <= 0:
        return False
    stat = proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def same_process(pid: int, start: int) -> bool:
    """The pid is alive, not a zombie, and still the process that started at ``start``.

    One small read: cheap enough for every VM on every tick.
    """
    if pid <= 1:
        return False
    stat = proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X") and stat[1] == start


def is_ours(pid: int, start: int, service: str, api_sock: str) -> bool:
    """:func:`same_process`, and started as the VMM of this service's socket.

    ``api_sock`` is the value in the VMM's argv: in a jail, the in-jail path.
    """
    if not same_process(pid, start):
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return _has_pair(argv, b"--id", service.encode()) and _has_pair(
        argv, b"--api-sock", api_sock.encode()
    )


def _has_pair(argv: list[bytes], flag: bytes, value: bytes) -> bool:
    return any(a == flag and b == value for a, b in itertools.pairwise(argv))


def reap(pid: int) -> None:
    """Collect an exited child; a pid that is not our child is left alone."""
    # An adopted VMM is not our child: its parent (or init) reaps it instead.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
