"""The guest side of the double: a backend interface and a stand-in process.

``InstanceStart`` hands the VM configuration to a :class:`GuestBackend`. The
default backend starts this module as a child process whose lifetime is the
guest's: the double exits when it exits, and it dies when the double dies.
:mod:`tests.fcdouble.qemu` implements the same interface to boot real guests.

Run as ``python -m tests.fcdouble.guest PARENT_PID [--ignore-cad]
[--panic-after SECONDS]``; SIGUSR1 stands for the Ctrl-Alt-Del key sequence,
which a guest with ``reboot=k`` turns into a reboot (exit 0).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from typing import Any, Protocol

PR_SET_PDEATHSIG = 1


class GuestBootError(Exception):
    """The backend could not start the guest; InstanceStart fails with this."""


class Guest(Protocol):
    """A booted guest, as seen by the VMM."""

    def ctrl_alt_del(self) -> None:
        """Queue the Ctrl-Alt-Del key sequence."""

    def wait(self) -> int:
        """Block until the guest is gone; return how it ended."""


class GuestBackend(Protocol):
    """Boots a guest from the VMM's configuration (``GET /vm/config`` shape)."""

    def boot(self, config: dict[str, Any]) -> Guest:
        """Start the guest; it runs until it reboots, panics or the VMM dies.

        Raises :class:`GuestBootError` when the guest cannot be started.
        """


class StandInGuest:
    """A stand-in guest process."""

    def __init__(self, process: subprocess.Popen[bytes]):
        self.process = process

    def ctrl_alt_del(self) -> None:
        """Deliver the key sequence; the stand-in decides whether to reboot."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGUSR1)

    def wait(self) -> int:
        """Wait for the stand-in to exit."""
        return self.process.wait()


class StandInBackend:
    """Starts :mod:`tests.fcdouble.guest` processes."""

    def __init__(self, ignore_cad: bool = False):
        self.ignore_cad = ignore_cad

    def boot(self, config: dict[str, Any]) -> Guest:
        """Start the stand-in; without a root drive or initrd the guest panics."""
        argv = [sys.executable, "-m", "tests.fcdouble.guest", str(os.getpid())]
        if self.ignore_cad:
            argv.append("--ignore-cad")
        has_root = any(d.get("is_root_device") for d in config.get("drives", []))
        if not has_root and not (config.get("boot-source") or {}).get("initrd_path"):
            # No root filesystem to mount: the kernel panics, and with panic=1
            # Firecracker sees a reboot and exits 0 soon after boot.
            argv += ["--panic-after", "0.2"]
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
        )
        # Firecracker answers InstanceStart once the vCPUs run: wait for the
        # stand-in to have its signal handlers in place.
        assert process.stdout is not None
        process.stdout.readline()
        process.stdout.close()
        return StandInGuest(process)


def main(argv: list[str]) -> int:
    """Run the stand-in until Ctrl-Alt-Del, a panic, or the VMM's death."""
    parent = int(argv[0])
    # The guest cannot outlive its VMM; ask the kernel to kill us with it.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        return 1
    ignore_cad = "--ignore-cad" in argv
    panic_after = None
    if "--panic-after" in argv:
        panic_after = float(argv[argv.index("--panic-after") + 1])
    if ignore_cad:
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGUSR1, lambda *_: sys.exit(0))
    print("ready", flush=True)
    os.close(1)
    started = time.monotonic()
    while panic_after is None or time.monotonic() - started < panic_after:
        time.sleep(0.05)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
