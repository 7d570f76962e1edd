"""fc-init on this host under busybox sh and dash: the script, mounts, env,
kernel quoting and the service command (harness in ``conftest.py``)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from nodeagent.kernelargs import encode_env
from tests.fcinit.conftest import (
    FC_INIT,
    SHELLS,
    TIMEOUT,
    Guest,
    calls_of,
)

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
