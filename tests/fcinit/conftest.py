"""The harness of the fc-init tests: fake tools, a recording service, isolation.

Every system-changing tool fc-init calls (mount, mountpoint, ip, arping, hostname,
sync, reboot) is a fake from ``FC_INIT_BIN`` that records its argv; busybox sh would
run its own applets before anything on PATH, hence the knob. As a second wall,
fc-init runs in private user, mount, UTS and network namespaces, so even a broken
knob could not mount over, rename or re-address this host. The service is a small
Python script that records its argv, env, cwd and parent as JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nodeagent.guestinit import fc_init_path

FC_INIT = fc_init_path()
SHELLS = {
    "busybox": [shutil.which("busybox") or "/usr/bin/busybox", "sh"],
    "dash": [shutil.which("dash") or "/bin/dash"],
}
ISOLATE = [
    shutil.which("unshare") or "/usr/bin/unshare",
    "--user",
    "--map-root-user",
    "--mount",
    "--uts",
    "--net",
    "--propagation",
    "private",
]
FAKES = ("mount", "mountpoint", "ip", "arping", "hostname", "sync", "reboot")
TIMEOUT = 30.0
IP_ARG = "ip=172.16.0.2::172.16.0.1:255.255.255.0::eth0:off"

# One line per call: the tool's name and its arguments, written at once, since
# fc-init runs arping in the background while it calls the other tools.
FAKE_TOOL = r"""#!/bin/sh
name=${0##*/}
line=$name
for a in "$@"; do line="$line $a"; done
printf '%s\n' "$line" >>"$FAKE_CALLS"
for last in "$@"; do :; done
case $name in
mountpoint)
	case " ${FAKE_MOUNTED:-} " in *" $last "*) exit 0 ;; esac
	exit 1 ;;
mount)
	case " ${FAKE_MOUNT_FAILS:-} " in *" $last "*) exit 32 ;; esac ;;
ip)
	[ "$*" = "-4 addr show dev ${FAKE_IP_DEV:-eth0}" ] && printf '%s\n' "${FAKE_IP_SHOW:-}" ;;
esac
exit 0
"""

SERVICE = f"""#!{sys.executable}
import json, os, sys
record = {{
    "argv": sys.argv[1:],
    "env": dict(os.environ),
    "cwd": os.getcwd(),
    "ppid": os.getppid(),
    "pid": os.getpid(),
}}
with open(os.path.join(os.environ["FAKE_OUT"], "service.json"), "w") as out:
    json.dump(record, out)
sys.exit(int(os.environ.get("FAKE_EXIT", "0")))
"""

# Services for the PID 1 tests: one that stops on SIGTERM, one that ignores it.
POLITE = """#!/bin/sh
trap 'echo term >"$FAKE_OUT/term"; exit 0' TERM
echo "$PPID" >"$FAKE_OUT/ready"
while :; do sleep 0.05; done
"""
STUBBORN = """#!/bin/sh
trap '' TERM
echo "$PPID" >"$FAKE_OUT/ready"
while :; do sleep 0.05; done
"""


@dataclass
class Result:
    returncode: int
    stderr: str
    calls: list[str]
    service: dict[str, Any] | None

    @property
    def argv(self) -> list[str]:
        assert self.service is not None, self.stderr
        return list(self.service["argv"])

    @property
    def env(self) -> dict[str, str]:
        assert self.service is not None, self.stderr
        return dict(self.service["env"])


class Guest:
    """A fake guest around fc-init: its fakes, its image root and its cmdline."""

    def __init__(self, tmp: Path, shell: list[str]) -> None:
        self.shell = shell
        self.bin = tmp / "bin"
        self.root = tmp / "root"
        self.out = tmp / "out"
        self.cmdline = tmp / "cmdline"
        self.log = tmp / "console.log"
        for directory in (self.bin, self.out, self.root / "etc" / "firework"):
            directory.mkdir(parents=True)
        for name in FAKES:
            self._script(self.bin / name, FAKE_TOOL)
        self.service = self._script(tmp / "service", SERVICE)
        self.polite = self._script(tmp / "polite", POLITE)
        self.stubborn = self._script(tmp / "stubborn", STUBBORN)
        self.cad = self.root / "proc" / "sys" / "kernel" / "ctrl-alt-del"
        self.cad.parent.mkdir(parents=True)
        self.cad.write_text("1\n")
        self.calls_file = self.out / "calls"
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "FAKE_CALLS": str(self.calls_file),
            "FAKE_OUT": str(self.out),
            "FC_INIT_BIN": str(self.bin),
            "FC_INIT_ROOT": str(self.root),
            "FC_INIT_CMDLINE": str(self.cmdline),
        }

    @staticmethod
    def _script(path: Path, text: str) -> Path:
        path.write_text(text)
        path.chmod(0o755)
        return path

    def start(
        self,
        cmdline: str = "console=ttyS0",
        args: Sequence[str | Path] = (),
        env: dict[str, str] | None = None,
        pid1: bool = False,
    ) -> subprocess.Popen[bytes]:
        """Start fc-init with ``cmdline`` as its /proc/cmdline and ``args`` as argv."""
        self.cmdline.write_text(cmdline + "\n")
        environ = {**self.env, **(env or {})}
        if pid1:
            environ["FC_INIT_PID1"] = "1"
        with self.log.open("wb") as log:
            return subprocess.Popen(
                [*ISOLATE, *self.shell, str(FC_INIT), *map(str, args)],
                env=environ,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def run(
        self,
        cmdline: str = "console=ttyS0",
        args: Sequence[str | Path] = (),
        env: dict[str, str] | None = None,
        pid1: bool = False,
    ) -> Result:
        """Run fc-init to its end."""
        process = self.start(cmdline, args, env, pid1)
        process.wait(timeout=TIMEOUT)
        return self.result(process)

    def result(self, process: subprocess.Popen[bytes]) -> Result:
        record = self.out / "service.json"
        calls = self.calls_file.read_text() if self.calls_file.exists() else ""
        return Result(
            returncode=process.returncode,
            stderr=self.log.read_text(),
            calls=calls.splitlines(),
            service=json.loads(record.read_text()) if record.exists() else None,
        )

    def wait_for(self, name: str) -> str:
        deadline = time.monotonic() + TIMEOUT
        path = self.out / name
        while not (path.exists() and path.read_text().endswith("\n")):
            assert time.monotonic() < deadline, f"no {name}: {self.log.read_text()}"
            time.sleep(0.02)
        return path.read_text()


@pytest.fixture(params=sorted(SHELLS))
def guest(request: pytest.FixtureRequest, tmp_path: Path) -> Guest:
    return Guest(tmp_path, SHELLS[request.param])


def calls_of(result: Result, tool: str) -> list[str]:
    return [call for call in result.calls if call.split(" ", 1)[0] == tool]
