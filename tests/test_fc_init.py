"""fc-init, the guest's init script, run on this host under busybox sh and dash.

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
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nodeagent.guestinit import fc_init_path
from nodeagent.kernelargs import encode_env

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

# One line per call: the tool's name and its arguments.
FAKE_TOOL = r"""#!/bin/sh
name=${0##*/}
{ printf '%s' "$name"; for a in "$@"; do printf ' %s' "$a"; done; echo; } >>"$FAKE_CALLS"
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


# -- the script itself ----------------------------------------------------------


@pytest.mark.parametrize("shell", sorted(SHELLS))
def test_fc_init_is_valid_posix_sh_for_busybox_and_dash(shell: str) -> None:
    done = subprocess.run(
        [*SHELLS[shell], "-n", str(FC_INIT)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert FC_INIT.read_text().startswith("#!/bin/sh\n")
    assert os.access(FC_INIT, os.X_OK)


def test_fc_init_never_evaluates_anything() -> None:
    code = [line.split("#", 1)[0] for line in FC_INIT.read_text().splitlines()[1:]]
    assert not [line for line in code if "eval" in line.split()]


def test_test_knobs_without_fake_tools_are_refused(guest: Guest) -> None:
    del guest.env["FC_INIT_BIN"]
    result = guest.run(args=[guest.service])
    assert result.returncode == 2
    assert "fc-init: test knobs need FC_INIT_BIN, refusing to run" in result.stderr
    assert result.service is None


# -- mounts ------------------------------------------------------------------------


def test_pseudo_filesystems_are_mounted_in_order(guest: Guest) -> None:
    result = guest.run(args=[guest.service])
    assert calls_of(result, "mount") == [
        "mount -t proc proc /proc",
        "mount -t sysfs sysfs /sys",
        "mount -t devtmpfs devtmpfs /dev",
        "mount -t devpts devpts /dev/pts",
        "mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm",
        "mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run",
        "mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp",
    ]


def test_mounted_filesystems_are_left_alone(guest: Guest) -> None:
    result = guest.run(args=[guest.service], env={"FAKE_MOUNTED": "/proc /dev /tmp"})
    mounted = [call.rsplit(" ", 1)[1] for call in calls_of(result, "mount")]
    assert mounted == ["/sys", "/dev/pts", "/dev/shm", "/run"]


def test_a_failing_mount_is_logged_and_boot_goes_on(guest: Guest) -> None:
    result = guest.run(args=[guest.service], env={"FAKE_MOUNT_FAILS": "/run"})
    assert "fc-init: mount failed type=tmpfs dir=/run" in result.stderr
    assert result.returncode == 0
    assert result.service is not None


# -- env -----------------------------------------------------------------------------


def test_raw_env_values_reach_the_service(guest: Guest) -> None:
    result = guest.run(
        "console=ttyS0 firework.env.GREETING=hi firework.env.URL=http://10.0.0.2:80/a?b=c",
        args=[guest.service],
    )
    assert result.env["GREETING"] == "hi"
    assert result.env["URL"] == "http://10.0.0.2:80/a?b=c"
    assert not [key for key in result.env if key.startswith("FC_INIT_")]


TRICKY_VALUES = {
    "spaces": "a b  c ",
    "quotes": "say \"hi\" and 'bye'",
    "newlines": "line1\nline2\n\n",
    "utf8": "grüße, 東京, emoji 🔥",
    "command substitution": "$(touch {marker})",
    "backticks": "`touch {marker}`",
    "shell syntax": "; touch {marker} && echo | cat > {marker} *",
    "backslashes": "C:\\new\\table \\n",
    "empty": "",
}


@pytest.mark.parametrize("name", sorted(TRICKY_VALUES))
def test_env64_values_arrive_byte_exact_and_are_never_run(
    guest: Guest, tmp_path: Path, name: str
) -> None:
    marker = tmp_path / "marker"
    value = TRICKY_VALUES[name].format(marker=marker)
    args = encode_env({"VALUE": value})
    result = guest.run(f"console=ttyS0 {' '.join(args)}", args=[guest.service])
    assert result.env["VALUE"] == value
    assert not marker.exists()


def test_env_values_are_never_logged(guest: Guest) -> None:
    args = encode_env({"TOKEN": "s3cr3t-raw", "PASSWORD": "s3cr3t with space"})
    result = guest.run(f"console=ttyS0 {' '.join(args)}", args=[guest.service])
    assert "fc-init: env keys=PASSWORD TOKEN" in result.stderr
    assert "s3cr3t" not in result.stderr
    assert "s3cr3t" not in "\n".join(result.calls)


@pytest.mark.parametrize(
    ("arg", "key", "reason"),
    [
        ("firework.env.1ABC=x", "1ABC", "invalid name"),
        ("firework.env.A-B=x", "A-B", "invalid name"),
        ("firework.env.A.B=x", "A.B", "invalid name"),
        ("firework.env.=x", "", "invalid name"),
        ("firework.env._fc_path=x", "_fc_path", "invalid name"),
        ("firework.env64.$(touch)=eA", "$(touch)", "invalid name"),
        ("firework.env64.BAD=!!!", "BAD", "bad base64url"),
        ("firework.env64.BAD=abcde", "BAD", "bad base64url"),
        ("firework.env64.BAD=a+b/", "BAD", "bad base64url"),
    ],
)
def test_bad_env_entries_are_skipped_with_a_message(
    guest: Guest, arg: str, key: str, reason: str
) -> None:
    result = guest.run(f"console=ttyS0 {arg} firework.env.GOOD=1", args=[guest.service])
    assert f"fc-init: skipped env key={key} from=cmdline: {reason}" in result.stderr
    assert result.env["GOOD"] == "1"
    assert key not in result.env


def test_env_after_the_separator_is_not_env(guest: Guest) -> None:
    result = guest.run(
        f"console=ttyS0 firework.env.A=1 -- {guest.service} firework.env.B=2"
    )
    assert result.env["A"] == "1"
    assert "B" not in result.env
    assert result.argv == ["firework.env.B=2"]


def test_image_env_file_is_exported_and_the_cmdline_wins(guest: Guest) -> None:
    (guest.root / "etc" / "firework" / "env").write_text(
        "# defaults\nMODE=image\nONLY_IMAGE=a b $(x)\n\nbad-key=1\nNOEQUALS\n"
    )
    result = guest.run("console=ttyS0 firework.env.MODE=cmdline", args=[guest.service])
    assert result.env["MODE"] == "cmdline"
    assert result.env["ONLY_IMAGE"] == "a b $(x)"
    assert "skipped env key=bad-key from=/etc/firework/env: invalid name" in (
        result.stderr
    )
    assert "skipped env line=6 from=/etc/firework/env: no =" in result.stderr
    assert "NOEQUALS" not in result.stderr


# -- kernel quoting --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arg", "value"),
    [
        ('firework.env.V="two words"', "two words"),
        ('"firework.env.V=two words"', "two words"),
        ('firework.env.V="  spaced  out "', "  spaced  out "),
        ('firework.env.V=""', ""),
        ('firework.env.V="a"b"c"', 'a"b"c'),
        ('firework.env.V="unterminated value', "unterminated value"),
        ('firework.env.V=in"side', 'in"side'),
        ("firework.env.V='single'", "'single'"),
    ],
)
def test_quoted_cmdline_arguments_are_split_like_the_kernel(
    guest: Guest, arg: str, value: str
) -> None:
    result = guest.run(f"console=ttyS0 {arg}", args=[guest.service])
    assert result.env["V"] == value


# -- the service command -------------------------------------------------------------


def test_init_arguments_are_the_service_command(guest: Guest) -> None:
    result = guest.run(
        f"console=ttyS0 -- ignored {guest.service}",
        args=[guest.service, "two words", "", "*", "$(x)"],
    )
    assert result.argv == ["two words", "", "*", "$(x)"]


def test_separator_in_cmdline_file_gives_the_command_without_arguments(
    guest: Guest,
) -> None:
    result = guest.run(
        f'console=ttyS0 firework.env.A=1 -- {guest.service} plain "two words" *'
    )
    assert result.argv == ["plain", "two words", "*"]
    assert result.returncode == 0


def test_command_file_is_the_last_resort(guest: Guest, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    (guest.root / "etc" / "firework" / "command").write_text(
        f"{guest.service}\nwith  spaces\n$(touch {marker})\n\n`id`"
    )
    result = guest.run("console=ttyS0")
    assert result.argv == ["with  spaces", f"$(touch {marker})", "`id`"]
    assert not marker.exists()


def test_no_command_anywhere_is_an_error(guest: Guest) -> None:
    result = guest.run("console=ttyS0")
    assert result.returncode == 1
    assert "fc-init: no service command" in result.stderr
    assert calls_of(result, "reboot") == []


def test_service_replaces_fc_init_when_not_pid1(guest: Guest) -> None:
    process = guest.start(args=[guest.service], env={"FAKE_EXIT": "7"})
    process.wait(timeout=TIMEOUT)
    result = guest.result(process)
    assert result.returncode == 7
    assert result.service is not None
    assert result.service["pid"] == process.pid
    assert calls_of(result, "reboot") == []


@pytest.mark.parametrize("source", ["cmdline", "file"])
def test_workdir_is_entered_before_the_service_starts(
    guest: Guest, tmp_path: Path, source: str
) -> None:
    workdir = tmp_path / "srv"
    workdir.mkdir()
    cmdline = "console=ttyS0"
    if source == "cmdline":
        cmdline += f" firework.workdir={workdir}"
    else:
        (guest.root / "etc" / "firework" / "workdir").write_text(f"{workdir}\n")
    result = guest.run(cmdline, args=[guest.service])
    assert result.service is not None
    assert result.service["cwd"] == str(workdir)


def test_missing_workdir_fails_the_service(guest: Guest) -> None:
    result = guest.run(
        "console=ttyS0 firework.workdir=/nonexistent/dir", args=[guest.service]
    )
    assert result.returncode == 1
    assert "fc-init: cannot enter workdir=/nonexistent/dir" in result.stderr
    assert result.service is None


def test_path_defaults_to_the_standard_directories(guest: Guest) -> None:
    del guest.env["PATH"]
    result = guest.run(args=[guest.service])
    path = result.env["PATH"].split(":")
    assert {"/usr/sbin", "/usr/bin", "/sbin", "/bin"} <= set(path)


def test_an_existing_path_is_kept(guest: Guest) -> None:
    guest.env["PATH"] = f"/opt/x:{guest.env['PATH']}"
    result = guest.run(args=[guest.service])
    assert result.env["PATH"] == guest.env["PATH"]


# -- network ------------------------------------------------------------------------


def test_ip_argument_configures_the_device(guest: Guest) -> None:
    result = guest.run(f"console=ttyS0 {IP_ARG}", args=[guest.service])
    assert calls_of(result, "ip") == [
        "ip link set lo up",
        "ip -4 addr show dev eth0",
        "ip link set dev eth0 up",
        "ip addr add 172.16.0.2/24 dev eth0",
        "ip route add default via 172.16.0.1 dev eth0",
    ]
    assert calls_of(result, "arping") == ["arping -U -c 1 -I eth0 172.16.0.2"]
    assert (
        "fc-init: network up dev=eth0 ip=172.16.0.2/24 gateway=172.16.0.1"
        in result.stderr
    )


@pytest.mark.parametrize(
    ("netmask", "prefix"),
    [
        ("255.255.255.0", 24),
        ("255.255.0.0", 16),
        ("255.255.255.252", 30),
        ("255.255.255.255", 32),
        ("255.0.0.0", 8),
        ("255.255.254.0", 23),
        ("255.255.255.128", 25),
        ("128.0.0.0", 1),
        ("0.0.0.0", 0),
    ],
)
def test_netmask_becomes_a_prefix_length(
    guest: Guest, netmask: str, prefix: int
) -> None:
    result = guest.run(
        f"console=ttyS0 ip=10.1.2.3::10.1.2.1:{netmask}::eth0:off",
        args=[guest.service],
    )
    assert f"ip addr add 10.1.2.3/{prefix} dev eth0" in result.calls


@pytest.mark.parametrize(
    "netmask",
    ["255.0.255.0", "255.255.255.1", "256.0.0.0", "255.255.255", "", "24", "a.b.c.d"],
)
def test_a_bad_netmask_leaves_the_device_alone(guest: Guest, netmask: str) -> None:
    result = guest.run(
        f"console=ttyS0 ip=10.1.2.3::10.1.2.1:{netmask}::eth0:off",
        args=[guest.service],
    )
    assert f"fc-init: bad netmask={netmask}, network not configured" in result.stderr
    assert calls_of(result, "ip") == ["ip link set lo up"]
    assert result.service is not None


def test_a_bad_gateway_leaves_the_device_alone(guest: Guest) -> None:
    result = guest.run(
        "console=ttyS0 ip=10.1.2.3::10.1.2:255.255.255.0::eth0:off",
        args=[guest.service],
    )
    assert "fc-init: bad gateway=10.1.2, network not configured" in result.stderr
    assert calls_of(result, "ip") == ["ip link set lo up"]


def test_without_gateway_no_default_route_is_added(guest: Guest) -> None:
    result = guest.run(
        "console=ttyS0 ip=10.1.2.3:::255.255.0.0::eth1:off", args=[guest.service]
    )
    assert "ip addr add 10.1.2.3/16 dev eth1" in result.calls
    assert not [call for call in result.calls if "route" in call]


def test_a_configured_device_is_left_alone(guest: Guest) -> None:
    result = guest.run(
        f"console=ttyS0 {IP_ARG}",
        args=[guest.service],
        env={"FAKE_IP_SHOW": "    inet 172.16.0.2/24 scope global eth0"},
    )
    assert calls_of(result, "ip") == ["ip link set lo up", "ip -4 addr show dev eth0"]
    assert "fc-init: network already configured dev=eth0" in result.stderr


def test_without_ip_argument_only_loopback_comes_up(guest: Guest) -> None:
    result = guest.run("console=ttyS0", args=[guest.service])
    assert calls_of(result, "ip") == ["ip link set lo up"]
    assert calls_of(result, "arping") == []


@pytest.mark.parametrize("arg", ["ip=", "ip=off", "ip=none"])
def test_ip_off_or_empty_only_brings_up_loopback(guest: Guest, arg: str) -> None:
    result = guest.run(f"console=ttyS0 {arg}", args=[guest.service])
    assert calls_of(result, "ip") == ["ip link set lo up"]
    assert "fc-init: ip=" not in result.stderr


@pytest.mark.parametrize("client", ["dhcp", "10.0.0.300", "10.0.0", "1.2.3.4.5"])
def test_ip_without_a_static_address_is_not_configured(
    guest: Guest, client: str
) -> None:
    result = guest.run(f"console=ttyS0 ip={client}", args=[guest.service])
    assert calls_of(result, "ip") == ["ip link set lo up"]
    assert "ip= without a static address is not supported" in result.stderr


# -- hostname -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "hostname"),
    [
        ("ip=10.0.0.2::10.0.0.1:255.255.255.0:web-1:eth0:off", "web-1"),
        ("firework.hostname=api.internal", "api.internal"),
        (
            "ip=10.0.0.2::10.0.0.1:255.255.255.0:from-ip:eth0:off "
            "firework.hostname=other",
            "from-ip",
        ),
        ('firework.hostname="quoted"', "quoted"),
    ],
)
def test_hostname_is_set_and_written(guest: Guest, args: str, hostname: str) -> None:
    result = guest.run(f"console=ttyS0 {args}", args=[guest.service])
    assert calls_of(result, "hostname") == [f"hostname {hostname}"]
    assert (guest.root / "etc" / "hostname").read_text() == f"{hostname}\n"
    assert (guest.root / "etc" / "hosts").read_text() == (
        f"127.0.0.1 localhost\n127.0.0.1 {hostname}\n"
    )


def test_hosts_entries_are_not_duplicated(guest: Guest) -> None:
    hosts = guest.root / "etc" / "hosts"
    hosts.write_text("# static\n127.0.0.1\tlocalhost web\n")
    guest.run("console=ttyS0 firework.hostname=web", args=[guest.service])
    assert hosts.read_text() == "# static\n127.0.0.1\tlocalhost web\n"


def test_a_read_only_etc_does_not_stop_the_boot(guest: Guest) -> None:
    shutil.rmtree(guest.root / "etc")
    result = guest.run("console=ttyS0 firework.hostname=web", args=[guest.service])
    assert calls_of(result, "hostname") == ["hostname web"]
    assert result.returncode == 0
    assert result.service is not None


def test_without_a_hostname_it_is_left_as_is(guest: Guest) -> None:
    result = guest.run(f"console=ttyS0 {IP_ARG}", args=[guest.service])
    assert calls_of(result, "hostname") == []
    assert not (guest.root / "etc" / "hostname").exists()


@pytest.mark.parametrize("name", ["bad_name", "-rf", "a;b", "$(id)"])
def test_a_bad_hostname_is_refused(guest: Guest, name: str) -> None:
    result = guest.run(f"console=ttyS0 firework.hostname={name}", args=[guest.service])
    assert calls_of(result, "hostname") == []
    assert f"fc-init: bad hostname={name}, left unchanged" in result.stderr


# -- as PID 1 ---------------------------------------------------------------------------


def test_pid1_routes_ctrl_alt_del_to_init(guest: Guest) -> None:
    guest.run(args=[guest.service], pid1=True)
    assert guest.cad.read_text() == "0\n"


def test_not_pid1_leaves_ctrl_alt_del_alone(guest: Guest) -> None:
    guest.run(args=[guest.service])
    assert guest.cad.read_text() == "1\n"


def test_pid1_service_exit_is_logged_then_synced_and_rebooted(guest: Guest) -> None:
    process = guest.start(
        "console=ttyS0 firework.env.FAKE_EXIT=3", args=[guest.service], pid1=True
    )
    process.wait(timeout=TIMEOUT)
    result = guest.result(process)
    assert result.service is not None
    assert result.service["ppid"] == process.pid
    assert "fc-init: service exited status=3" in result.stderr
    assert result.calls[-2:] == ["sync", "reboot -f"]
    assert result.returncode == 3


@pytest.mark.parametrize(
    "signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"]
)
def test_pid1_signal_stops_the_service_with_sigterm(
    guest: Guest, signum: signal.Signals
) -> None:
    process = guest.start(
        "console=ttyS0 firework.stop_timeout=5", args=[guest.polite], pid1=True
    )
    assert int(guest.wait_for("ready")) == process.pid
    process.send_signal(signum)
    process.wait(timeout=TIMEOUT)
    result = guest.result(process)
    # fc-init only ends after the service, which wrote this before exiting.
    assert (guest.out / "term").read_text() == "term\n"
    name = signum.name.removeprefix("SIG")
    assert f"fc-init: stopping service signal={name}" in result.stderr
    assert "fc-init: service exited status=0" in result.stderr
    assert "killing" not in result.stderr
    assert result.calls[-2:] == ["sync", "reboot -f"]


def test_pid1_kills_a_service_that_ignores_sigterm_after_stop_timeout(
    guest: Guest,
) -> None:
    process = guest.start(
        "console=ttyS0 firework.stop_timeout=1", args=[guest.stubborn], pid1=True
    )
    guest.wait_for("ready")
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    process.wait(timeout=TIMEOUT)
    elapsed = time.monotonic() - started
    result = guest.result(process)
    assert 0.9 < elapsed < 5
    assert "service still running after timeout=1, killing" in result.stderr
    assert "fc-init: service exited status=137" in result.stderr
    assert result.calls[-2:] == ["sync", "reboot -f"]


def test_pid1_without_a_command_reboots(guest: Guest) -> None:
    result = guest.run("console=ttyS0", pid1=True)
    assert "fc-init: no service command" in result.stderr
    assert result.calls[-2:] == ["sync", "reboot -f"]
    assert result.returncode == 1
