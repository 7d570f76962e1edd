"""A jailer test double: the real jailer's argv, jail layout and exec, no isolation.

Run it through the ``jailer`` launcher next to this file, like the real binary::

    jailer --id ID --exec-file FC --uid U --gid G [--chroot-base-dir DIR] -- ARGS

What it reproduces (Firecracker 1.16.1, see section 3 of
``shared/reference/firecracker-behaviour.md``):

- the argument parser: separate value tokens (``--flag=value`` is an unknown
  argument), required ``--id``/``--exec-file``/``--uid``/``--gid``, no
  duplicates, everything after ``--`` forwarded to Firecracker; errors go to
  stderr with exit 1;
- the checks: id ``[A-Za-z0-9-]{1,64}``, ``--chroot-base-dir`` must exist,
  ``--exec-file`` must be a regular file (symlinks resolved, and the resolved
  name names the jail);
- the layout: ``<base>/<exec name>/<id>/root`` with ``dev``, ``dev/net`` and
  ``run`` (0700, owned uid:gid), a copy of the exec file, and the pid file
  ``<root>/<exec name>.pid`` written with create_new, so a leftover pid file
  fails the start;
- the exec in place (same pid) into the Firecracker double with
  ``--id ID --start-time-us N --start-time-cpu-us N --parent-cpu-time-us N``
  followed by the forwarded arguments.

How it differs from the real jailer, because it is a test double:

- no chroot or pivot_root and no mount namespace: it sets ``FCDOUBLE_CHROOT`` to
  the jail root instead, and the Firecracker double resolves ``--api-sock`` and
  the API's file paths below it;
- no uid/gid switch: the VMM keeps running as the caller, so it can read files
  its uid could not;
- no mknod: ``dev/kvm`` and ``dev/net/tun`` are empty regular files, created
  exclusively so that a reused jail still fails at that step;
- it execs the original exec file, not the copy, because the Firecracker double
  is a launcher script that finds the repository from its own path;
- the environment is kept (the double's knobs live there) and ``--netns``,
  cgroups, resource limits, ``--daemonize`` and ``--new-pid-ns`` are parsed but
  refused as not implemented.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time

EXIT_ERROR = 1
INSTANCE_ID = re.compile(r"[A-Za-z0-9-]{1,64}")
WITH_VALUE = {
    "--id",
    "--exec-file",
    "--uid",
    "--gid",
    "--chroot-base-dir",
    "--netns",
    "--cgroup",
    "--cgroup-version",
    "--parent-cgroup",
    "--resource-limit",
}
SWITCHES = {"--daemonize", "--new-pid-ns", "--version", "--help", "-h"}
REPEATABLE = {"--cgroup", "--resource-limit"}
REQUIRED = ("--id", "--exec-file", "--uid", "--gid")
NOT_IMPLEMENTED = (
    "--netns",
    "--cgroup",
    "--parent-cgroup",
    "--resource-limit",
    "--daemonize",
    "--new-pid-ns",
)
DEFAULT_CHROOT_BASE = "/srv/jailer"
USAGE = (
    "jailer --id <id> --exec-file <exec-file> --uid <uid> --gid <gid>"
    " [--chroot-base-dir <dir>] [-- <firecracker args>]"
)


class JailError(Exception):
    """The jailer refuses to go on; the message is what it prints."""


def parse_args(argv: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """The jailer's flags (values listed per flag) and the args after ``--``."""
    args: dict[str, list[str]] = {}
    i = 0
    while i < len(argv):
        flag = argv[i]
        if flag == "--":
            return args, argv[i + 1 :]
        known = flag in WITH_VALUE or flag in SWITCHES
        if not known or (flag in args and flag not in REPEATABLE):
            raise JailError(
                f"Arguments parsing error: Found argument '{flag}' which wasn't"
                " expected, or isn't valid in this context."
            )
        if flag in SWITCHES:
            args[flag] = []
            i += 1
            continue
        if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
            raise JailError(
                f"Arguments parsing error: The argument '{flag}' requires a value,"
                " but none was supplied."
            )
        args.setdefault(flag, []).append(argv[i + 1])
        i += 2
    return args, []


def check_args(args: dict[str, list[str]]) -> None:
    """Required flags present, then what the double cannot do refused."""
    for flag in REQUIRED:
        if flag not in args:
            raise JailError(
                f"Arguments parsing error: Argument '{flag}' required, but not found."
            )
    for flag in NOT_IMPLEMENTED:
        if flag in args:
            raise JailError(f"fcdouble jailer: {flag} is not implemented by the double")
    version = args.get("--cgroup-version", ["1"])[0]
    if version not in ("1", "2"):
        raise JailError(f"Invalid cgroup version: {version}")


def instance_id(value: str) -> str:
    """Validate ``--id`` with the jailer's wording."""
    if not 1 <= len(value) <= 64:
        raise JailError(
            f"Invalid instance ID: Invalid len ({len(value)});  the length must be"
            " between 1 and 64"
        )
    for position, char in enumerate(value):
        if not INSTANCE_ID.fullmatch(char):
            raise JailError(
                f"Invalid instance ID: Invalid char ({char}) at position {position}"
            )
    return value


def number(flag: str, value: str) -> int:
    """A u32 uid or gid."""
    if not value.isdigit() or int(value) >= 2**32:
        raise JailError(f"Invalid {flag.lstrip('-')}: {value}")
    return int(value)


def canonical(path: str) -> str:
    """``realpath`` that fails on a missing path, as Rust's canonicalize does."""
    try:
        return os.path.realpath(path, strict=True)
    except OSError as exc:
        raise JailError(
            f"Failed to canonicalize path {path}: {exc.strerror} (os error {exc.errno})"
        ) from exc


def make_dir(path: str, uid: int, gid: int) -> None:
    """Create (or reuse) a 0700 directory owned by uid:gid."""
    os.makedirs(path, exist_ok=True)
    os.chmod(path, 0o700)
    os.chown(path, uid, gid)


def copy_exec_file(source: str, target: str, uid: int, gid: int) -> None:
    """Copy the binary in; refuse a symlinked or hard-linked destination."""
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o700)
    except OSError as exc:
        raise JailError(f"Failed to open {target}: {exc}") from exc
    with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
        if os.fstat(fd).st_nlink > 1:
            raise JailError(f"Detected hard link at: {target}")
        out.truncate()
        shutil.copyfileobj(src, out)
        os.fchmod(fd, os.stat(source).st_mode & 0o7777)
        os.fchown(fd, uid, gid)


def create_new(path: str, data: bytes, jail_path: str) -> None:
    """Write a file that must not exist yet (Rust's ``create_new``)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise JailError(
            f"Failed to open file {jail_path}: File exists (os error 17)"
        ) from exc
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def stand_in_devices(root: str, uid: int, gid: int) -> None:
    """Empty files where the jailer mknods ``/dev/kvm`` and ``/dev/net/tun``."""
    for device in ("dev/net/tun", "dev/kvm"):
        try:
            fd = os.open(
                os.path.join(root, device), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600
            )
        except FileExistsError as exc:
            raise JailError(
                f"Failed to create /{device} via mknod inside the jail: File exists"
                " (os error 17)"
            ) from exc
        os.fchown(fd, uid, gid)
        os.close(fd)


def build_jail(args: dict[str, list[str]]) -> tuple[str, str, str]:
    """Check the arguments and lay out the jail: (exec file, id, jail root)."""
    ident = instance_id(args["--id"][0])
    exec_file = canonical(args["--exec-file"][0])
    if not os.path.isfile(exec_file):
        raise JailError(f"{exec_file} is not a file")
    uid = number("--uid", args["--uid"][0])
    gid = number("--gid", args["--gid"][0])
    base = canonical(args.get("--chroot-base-dir", [DEFAULT_CHROOT_BASE])[0])
    name = os.path.basename(exec_file)
    root = os.path.join(base, name, ident, "root")
    os.makedirs(root, exist_ok=True)
    copy_exec_file(exec_file, os.path.join(root, name), uid, gid)
    for sub in ("", "dev", "dev/net", "run"):
        make_dir(os.path.join(root, sub), uid, gid)
    stand_in_devices(root, uid, gid)
    pid_file = f"{name}.pid"
    create_new(os.path.join(root, pid_file), str(os.getpid()).encode(), f"/{pid_file}")
    return exec_file, ident, root


def main(argv: list[str]) -> int:
    """Jail and exec; return only on an error."""
    try:
        args, extra = parse_args(argv)
        if "--version" in args:
            print("Jailer v1.16.1")
            return 0
        if "--help" in args or "-h" in args:
            print(USAGE)
            return 0
        check_args(args)
        started_us = time.monotonic_ns() // 1000
        exec_file, ident, root = build_jail(args)
    except (JailError, OSError) as exc:
        print(f"Jailer error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    cpu_us = time.process_time_ns() // 1000
    fc_argv = [
        exec_file,
        "--id",
        ident,
        "--start-time-us",
        str(started_us),
        "--start-time-cpu-us",
        str(cpu_us),
        "--parent-cpu-time-us",
        "0",
        *extra,
    ]
    os.environ["FCDOUBLE_CHROOT"] = root
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(exec_file, fc_argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
