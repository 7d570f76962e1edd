"""``firework-image``: build an ext4 root drive for a Firework guest from a directory.

The image gets ``fc-init`` at ``/sbin/fc-init``, the directories it mounts on, and
the service's command and env under ``/etc/firework``. ``mke2fs -d`` fills it from a
staging copy: no mount needed. See docs/images.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from nodeagent.guestinit import fc_init_path

log = logging.getLogger(__name__)

MIB = 1 << 20
BLOCK = 4096
# mke2fs needs room for its own metadata (inode tables, journal) on top of the
# files; 30% plus 16 MiB leaves space for small and large trees alike.
AUTO_FACTOR = 1.3
AUTO_EXTRA = 16 * MIB
LABEL_MAX = 16  # bytes, an ext4 limit
_SIZE = re.compile(r"(\d+)([KMG]?)", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Directories fc-init mounts on or writes to; mode 0755 unless listed.
STANDARD_DIRS = ("proc", "sys", "dev", "run", "tmp", "etc", "root", "sbin")
_DIR_MODES = {"proc": 0o555, "sys": 0o555, "tmp": 0o1777, "root": 0o700}


class ImageError(Exception):
    """The image could not be built; the message says why."""


class UsageError(ImageError):
    """The request itself is wrong (bad argument, missing source, existing output)."""


def parse_size(text: str) -> int | None:
    """Bytes from ``64M``, ``512K``, ``1G`` (binary) or bytes; None for ``auto``."""
    if text.strip().lower() == "auto":
        return None
    match = _SIZE.fullmatch(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise UsageError(f"bad size {text!r}: use bytes or a number with K, M or G")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def auto_size(root: Path) -> int:
    """A size that fits the tree under ``root`` with room for ext4's metadata."""
    content = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            size = os.lstat(os.path.join(dirpath, name)).st_size
            content += max(BLOCK, -(-size // BLOCK) * BLOCK)
    wanted = int(content * AUTO_FACTOR) + AUTO_EXTRA
    return -(-wanted // MIB) * MIB


def build_image(
    source: Path,
    output: Path,
    *,
    size: int | None = None,
    command: list[str] | None = None,
    env: dict[str, str] | None = None,
    label: str = "firework",
    force: bool = False,
) -> Path:
    """Build ``output`` from ``source`` with fc-init; ``size`` in bytes, None: auto.

    Raises :class:`UsageError` for a bad request, :class:`ImageError` for a failed
    build, which leaves no file at ``output``.
    """
    source, output = Path(source), Path(output)
    _check_paths(source, output, force)
    _check_content(command or [], env or {}, label)
    if not _resolve_inside(source, "bin/sh").exists():
        log.warning("warning: %s has no /bin/sh, which fc-init needs", source)
    with tempfile.TemporaryDirectory(prefix="firework-image-") as tmp:
        stage = Path(tmp) / "root"
        _copy_tree(source, stage)
        _prepare(stage, command or [], env or {})
        wanted = auto_size(stage) if size is None else -(-size // BLOCK) * BLOCK
        _make_ext4(stage, output, wanted, label)
    return output


def _check_paths(source: Path, output: Path, force: bool) -> None:
    if not source.is_dir():
        raise UsageError(f"source {source} is not a directory")
    if (output.exists() or output.is_symlink()) and not force:
        raise UsageError(f"output {output} exists (use --force to replace it)")
    if not output.parent.is_dir():
        raise UsageError(f"output directory {output.parent} does not exist")


def _check_content(command: list[str], env: dict[str, str], label: str) -> None:
    if len(label.encode()) > LABEL_MAX:
        raise UsageError(f"label {label!r} is longer than {LABEL_MAX} bytes")
    # One argv item or env entry per line: a newline cannot be stored.
    for arg in command:
        if not arg or "\n" in arg:
            raise UsageError(f"command argument {arg!r} is empty or has a newline")
    for key, value in env.items():
        if not _ENV_KEY.fullmatch(key):
            raise UsageError(f"env key {key!r} is not a valid name")
        if "\n" in value or "\0" in value:
            raise UsageError(f"env {key}: value has a newline or NUL")


def _resolve_inside(root: Path, relative: str) -> Path:
    """``relative`` under ``root``, following symlinks as the guest would.

    An absolute link such as ``sbin -> /usr/sbin`` must land in the tree, never
    on this host's ``/usr/sbin``.
    """
    current = root
    parts = list(Path(relative).parts)
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "/":
            current = root
        elif part == "..":
            current = current if current == root else current.parent
        elif part != ".":
            candidate = current / part
            if not candidate.is_symlink():
                current = candidate
                continue
            hops += 1
            if hops > 40:
                raise ImageError(f"too many symlinks resolving /{relative}")
            parts = [*Path(os.readlink(candidate)).parts, *parts]
    return current


def _copy_tree(source: Path, stage: Path) -> None:
    """Copy ``source`` keeping symlinks and modes; skip sockets, fifos, devices."""

    def special(directory: str, names: list[str]) -> set[str]:
        skipped = set()
        for name in names:
            path = os.path.join(directory, name)
            if not (
                os.path.islink(path) or os.path.isdir(path) or os.path.isfile(path)
            ):
                log.warning("warning: skipped special file %s", path)
                skipped.add(name)
        return skipped

    try:
        shutil.copytree(source, stage, symlinks=True, ignore=special)
    except (OSError, shutil.Error) as exc:
        raise ImageError(f"copying {source}: {exc}") from exc


def _prepare(stage: Path, command: list[str], env: dict[str, str]) -> None:
    """Standard directories, fc-init, and the command and env files."""
    for name in STANDARD_DIRS:
        path = _resolve_inside(stage, name)
        if not os.path.lexists(path):
            path.mkdir(parents=True)
            path.chmod(_DIR_MODES.get(name, 0o755))
    config = _resolve_inside(stage, "etc/firework")
    files = {_resolve_inside(stage, "sbin") / "fc-init": fc_init_path().read_text()}
    if command:
        files[config / "command"] = "".join(f"{arg}\n" for arg in command)
    if env:
        files[config / "env"] = "".join(f"{k}={v}\n" for k, v in env.items())
    for path, text in files.items():
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        # A symlink is replaced, never written through: sbin/fc-init -> busybox
        # must not turn busybox into fc-init.
        if os.path.lexists(path):
            path.unlink()
        path.write_text(text)
        path.chmod(0o755 if path.name == "fc-init" else 0o644)


def _make_ext4(stage: Path, output: Path, size: int, label: str) -> None:
    """mke2fs into a temp file next to ``output``, renamed into place on success."""
    fd, tmp_name = tempfile.mkstemp(
        dir=output.parent, prefix=f".{output.name}.", suffix=".tmp"
    )
    tmp = Path(tmp_name)
    try:
        os.ftruncate(fd, size)
        os.close(fd)
        argv = ["mke2fs", "-t", "ext4", "-F", "-q", "-d", str(stage), "-L", label]
        done = _run([*argv, "-E", "root_owner=0:0", str(tmp)])
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            detail = "; ".join(lines) or f"exit {done.returncode}"
            raise ImageError(f"mke2fs failed for {output} ({size} bytes): {detail}")
        tmp.chmod(0o644)
        tmp.replace(output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def inspect_image(image: Path) -> str:
    """Whether an image has fc-init, its command and its env keys (not values)."""
    stat = re.search(r"Mode:\s+(\d+)", _debugfs(image, "stat /sbin/fc-init"))
    command = _debugfs(image, "cat /etc/firework/command").splitlines()
    env = _debugfs(image, "cat /etc/firework/env").splitlines()
    keys = [entry.split("=", 1)[0] for entry in env]
    found = f"mode {stat.group(1)}" if stat else "missing"
    return (
        f"fc-init: {found}\ncommand: {shlex.join(command)}\nenv keys: {' '.join(keys)}"
    )


def _debugfs(image: Path, request: str) -> str:
    done = _run(["debugfs", "-R", request, str(image)])
    if not image.is_file() or "while trying to open" in done.stderr:
        raise ImageError(f"cannot read {image} as an ext4 image")
    return done.stdout


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run an e2fsprogs tool (fixed argv, no shell) and capture its output."""
    try:
        return subprocess.run(  # noqa: S603
            argv, capture_output=True, text=True, check=False
        )
    except FileNotFoundError as exc:
        raise ImageError(f"{argv[0]} not found: install e2fsprogs") from exc


def _parse_env(entries: Sequence[str]) -> dict[str, str]:
    if bad := [entry for entry in entries if "=" not in entry]:
        raise UsageError(f"--env {bad[0]!r}: expected KEY=VALUE")
    return dict(entry.partition("=")[::2] for entry in entries)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="firework-image", description="Build root drives for Firework guests."
    )
    sub = parser.add_subparsers(dest="action", required=True)
    build = sub.add_parser("build", help="build an ext4 image from a directory")
    build.add_argument("--source", required=True, type=Path, help="root directory")
    build.add_argument("--output", required=True, type=Path, help="image file")
    build.add_argument("--size", default="auto", help="64M, 1G, bytes or auto")
    group = build.add_mutually_exclusive_group()
    group.add_argument("--command", help="service command, split like a shell")
    group.add_argument(
        "--command-arg", action="append", default=[], help="one argv item"
    )
    build.add_argument("--env", action="append", default=[], help="KEY=VALUE")
    build.add_argument("--label", default="firework", help="ext4 volume label")
    build.add_argument("--force", action="store_true", help="replace the output")
    show = sub.add_parser("inspect", help="show fc-init, command and env keys")
    show.add_argument("image", type=Path)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``firework-image``; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="firework-image: %(message)s")
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.action == "inspect":
            print(inspect_image(args.image))
            return 0
        size = parse_size(args.size)
        command = shlex.split(args.command) if args.command else args.command_arg
        image = build_image(
            args.source,
            args.output,
            size=size,
            command=command or None,
            env=_parse_env(args.env) or None,
            label=args.label,
            force=args.force,
        )
    except (UsageError, ValueError) as exc:  # ValueError: shlex on --command
        parser.error(str(exc))  # exits 2
    except (ImageError, OSError) as exc:
        print(f"firework-image: {exc}", file=sys.stderr)
        return 1
    print(f"firework-image: built {image}")
    return 0
