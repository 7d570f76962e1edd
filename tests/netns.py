"""Network namespaces for tests: a private little network no packet can leave.

Every namespace a test makes has a unique name, only the links the test adds
(veth pairs between its own namespaces), and no route to the machine's real
network. Commands run inside through ``ip netns exec``; servers bind inside.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class Namespaces:
    """Creates namespaces and veth links; deletes all of them at the end."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.names: list[str] = []

    def new(self, role: str) -> str:
        """A fresh namespace with its loopback up; its name holds ``role``."""
        name = f"fwt-{self.tag}-{role}"
        run(["ip", "netns", "add", name])
        self.names.append(name)
        exec_in(name, ["ip", "link", "set", "lo", "up"])
        return name

    def veth(
        self,
        a: str,
        a_if: str,
        b: str,
        b_if: str,
        *,
        a_addr: str | None = None,
        b_addr: str | None = None,
    ) -> None:
        """A veth pair from namespace ``a`` to ``b``, both ends up.

        ``a_addr``/``b_addr`` (``10.9.0.1/24`` style) are set when given.
        """
        tmp_a, tmp_b = f"v{uuid.uuid4().hex[:10]}", f"v{uuid.uuid4().hex[:10]}"
        run(["ip", "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b])
        run(["ip", "link", "set", tmp_a, "netns", a, "name", a_if])
        run(["ip", "link", "set", tmp_b, "netns", b, "name", b_if])
        for ns, ifname, addr in ((a, a_if, a_addr), (b, b_if, b_addr)):
            if addr:
                exec_in(ns, ["ip", "addr", "add", addr, "dev", ifname])
            exec_in(ns, ["ip", "link", "set", ifname, "up"])

    def close(self) -> None:
        """Delete every namespace made here (their links go with them)."""
        for name in reversed(self.names):
            # processes still inside keep it alive; kill them first
            pids = subprocess.run(
                ["ip", "netns", "pids", name], capture_output=True, text=True
            ).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), 9)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.names.clear()


def run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run a command on the host; fail with its stderr."""
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done


def exec_in(
    ns: str, argv: Sequence[str], *, check: bool = True, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run a command inside namespace ``ns``."""
    done = subprocess.run(
        ["ip", "netns", "exec", ns, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"in {ns}: {' '.join(argv)} failed ({done.returncode}): "
            f"{done.stderr.strip()}"
        )
    return done


def python_in(
    ns: str, code: str, *, check: bool = True, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run Python ``code`` inside ``ns`` with the repository importable."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"in {ns}: python failed: {done.stderr.strip()}")
    return done


def popen_in(
    ns: str, argv: Sequence[str], *, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a long-running process inside ``ns`` in its own session.

    Its output goes to ``log`` when given; the caller stops it.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log or os.devnull, "ab") as out:
        return subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
