"""Builds the test guest once and caches it: kernel, initrd and rootfs.

``python -m tests.guest.build [--cache-dir DIR]`` builds (or finds) the guest and
prints its paths as JSON; tests call :func:`ensure_test_guest`.

- kernel: ``vmlinuz`` of Debian's current ``linux-image-*-cloud-amd64`` package
  (the ``.deb`` is cached too, in ``<cache>/debs``).
- initrd: busybox, the modules a virtio root and virtio-net need (with their
  dependencies, from the package's own ``modules.dep``) and ``initrd/init``,
  which mounts the root drive and hands over to the init named by ``init=``.
- rootfs: an ext4 image made by :func:`nodeagent.imagetool.build_image` (so it
  carries the product's ``fc-init``), with busybox and the ``/srv/start``
  service from ``rootfs/``.

The cache directory is ``$FIREWORK_TEST_GUEST_CACHE`` or
``/var/cache/firework/test-guest``; each guest lives in ``<cache>/<key>``, where
the key hashes the kernel package version and every input of the build (this
file, the guest files, busybox, fc-init, the image tool), so changing any of
them builds a new guest. A build runs in a temporary directory that is renamed
into place, under an exclusive lock, so parallel test processes build once.
Each use stamps the guest's directory; a build then removes guests, failed
builds and kernel packages unused for a week (see :func:`prune`).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import gzip
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from nodeagent import imagetool
from nodeagent.guestinit import fc_init_path

HERE = Path(__file__).resolve().parent
CACHE_ENV = "FIREWORK_TEST_GUEST_CACHE"
DEFAULT_CACHE = Path("/var/cache/firework/test-guest")
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX = Path("/bin/busybox")
# What the initrd must be able to load. Names that are built into the kernel
# are skipped; the rest come with their dependencies.
INITRD_MODULES = (
    "virtio_mmio",
    "virtio_blk",
    "virtio_net",
    "ext4",
    "i8042",
    "atkbd",
)
ROOTFS_SIZE = 48 * 1024 * 1024
SERVICE_COMMAND = ["/srv/start"]
IMAGE_LABEL = "fw-test-guest"
META_FILE = "guest.json"
# Guests (and kernel packages) unused for this long go when a new one is built.
PRUNE_AFTER = 7 * 24 * 3600
KEY_NAME = re.compile(r"[0-9a-f]{16}")
KO_SUFFIX = re.compile(r"\.ko(\.(xz|zst|gz))?$")


class BuildError(Exception):
    """The test guest cannot be built; the message says which step failed."""


@dataclass(frozen=True)
class TestGuest:
    """A built test guest: the files to boot and the kernel release they carry."""

    __test__ = False  # a dataclass, not a pytest test class

    kernel: Path
    initrd: Path
    rootfs: Path
    version: str
    package: str
    key: str


# -- inputs and the cache key -------------------------------------------------


def run(argv: list[str], *, cwd: Path | None = None) -> str:
    """Run a build step; fail with its output."""
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip()
        raise BuildError(f"{' '.join(argv)} failed ({done.returncode}): {output}")
    return done.stdout


@functools.cache
def kernel_package() -> tuple[str, str]:
    """The current cloud kernel package and its version, from the apt cache.

    The meta package pins the exact version it depends on, so one (slow,
    about a second here) apt-cache call answers both.
    """
    show = run(["apt-cache", "show", "--no-all-versions", KERNEL_META_PACKAGE])
    found = re.search(r"(linux-image-\S+-cloud-amd64) \(= ([^)\s]+)\)", show)
    if found is None:
        raise BuildError(f"{KERNEL_META_PACKAGE} pins no cloud kernel image version")
    return found.group(1), found.group(2)


def build_inputs() -> list[Path]:
    """Every file whose content shapes the guest (the cache key hashes them)."""
    guest_files = sorted(
        p
        for p in HERE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".md"
    )
    return [*guest_files, fc_init_path(), Path(imagetool.__file__), BUSYBOX]


def cache_key(package: str, version: str) -> str:
    """A short hash of the kernel package and the build inputs."""
    digest = hashlib.sha256(f"{package}={version}\n".encode())
    for path in build_inputs():
        digest.update(f"{path.name}:{path.stat().st_mode & 0o111}\n".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cache_root(cache_dir: Path | None = None) -> Path:
    """Where guests are cached: the argument, the env knob, or the default."""
    if cache_dir is not None:
        return cache_dir
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


# -- the public entry point ----------------------------------------------------


def ensure_test_guest(cache_dir: Path | None = None) -> TestGuest:
    """The cached test guest for the current inputs, built first if missing."""
    root = cache_root(cache_dir)
    package, version = kernel_package()
    key = cache_key(package, version)
    final = root / key
    if (final / META_FILE).is_file():
        return used(final)
    root.mkdir(parents=True, exist_ok=True)
    with locked(root / ".lock"):
        if (final / META_FILE).is_file():  # another process built it meanwhile
            return used(final)
        work = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=root))
        try:
            build(work, package, version, key, root / "debs")
            os.rename(work, final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        prune(root, keep=final)
    return used(final)


def used(directory: Path) -> TestGuest:
    """The guest in ``directory``, its last use recorded (its mtime) for :func:`prune`."""
    with contextlib.suppress(OSError):  # a read-only cache still serves
        os.utime(directory)
    return load(directory)


def prune(root: Path, keep: Path, now: float | None = None) -> list[Path]:
    """Remove guests, failed builds and ``.deb`` files unused for PRUNE_AFTER.

    Runs under the cache lock, after a build: other checkouts sharing the cache
    may still boot their (older or newer) guest, so only long-unused ones go.
    The ``.deb`` of a kept guest's kernel stays. Returns what was removed.
    """
    cutoff = (time.time() if now is None else now) - PRUNE_AFTER
    removed: list[Path] = []
    kept_debs: set[str] = set()
    for entry in sorted(root.iterdir()):
        guest = KEY_NAME.fullmatch(entry.name) and entry.is_dir()
        if not guest and not entry.name.startswith(".build-"):
            continue
        if entry != keep and entry.stat().st_mtime < cutoff:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
        elif guest and (entry / META_FILE).is_file():
            kept_debs.add(deb_name(*load(entry).package.split("=", 1)))
    debs = root / "debs"
    for deb in sorted(debs.glob("*.deb")) if debs.is_dir() else []:
        if deb.name not in kept_debs and deb.stat().st_mtime < cutoff:
            deb.unlink(missing_ok=True)
            removed.append(deb)
    return removed


def load(directory: Path) -> TestGuest:
    """A built guest from its directory."""
    meta = json.loads((directory / META_FILE).read_text())
    return TestGuest(
        kernel=directory / "vmlinuz",
        initrd=directory / "initrd.img",
        rootfs=directory / "rootfs.ext4",
        version=meta["version"],
        package=meta["package"],
        key=meta["key"],
    )


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (released when the fd closes)."""
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


# -- the build ------------------------------------------------------------------


def build(out: Path, package: str, version: str, key: str, debs: Path) -> None:
    """Build the three guest files into ``out`` (a fresh directory)."""
    started = time.monotonic()
    tree = out / "kernel-package"
    run(["dpkg", "-x", str(fetch_deb(package, version, debs)), str(tree)])
    moddir = module_dir(tree)
    release = moddir.name
    shutil.copyfile(tree / "boot" / f"vmlinuz-{release}", out / "vmlinuz")
    write_initrd(out / "initrd.img", moddir)
    shutil.rmtree(tree)
    write_rootfs(out / "rootfs.ext4", out / "rootfs-tree")
    meta = {
        "version": release,
        "package": f"{package}={version}",
        "key": key,
        "build_seconds": round(time.monotonic() - started, 1),
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    # readable by other users: a jailed VMM may not run as root
    out.chmod(0o755)


def fetch_deb(package: str, version: str, debs: Path) -> Path:
    """The package's ``.deb``, downloaded once into ``debs``."""
    debs.mkdir(parents=True, exist_ok=True)
    cached = debs / deb_name(package, version)
    if cached.is_file():
        return cached
    with tempfile.TemporaryDirectory(dir=debs) as tmp:
        # apt downloads as _apt when it can write the directory; keep it quiet
        Path(tmp).chmod(0o755)
        run(["apt-get", "download", f"{package}={version}"], cwd=Path(tmp))
        [deb] = Path(tmp).glob("*.deb")
        os.rename(deb, cached)
    return cached


def deb_name(package: str, version: str) -> str:
    """The file name a package's ``.deb`` is cached under."""
    return f"{package}_{version.replace(':', '%3a')}_amd64.deb"


def module_dir(tree: Path) -> Path:
    """``lib/modules/<release>`` of an extracted kernel package, with modules.dep.

    The package ships no ``modules.dep`` (its postinst runs depmod), so it is
    made here, with the package's own ``System.map``.
    """
    for lib in ("lib", "usr/lib"):
        found = sorted((tree / lib / "modules").glob("*"))
        if found:
            moddir = found[0]
            break
    else:
        raise BuildError(f"no lib/modules/<release> in {tree}")
    release = moddir.name
    base = moddir.parent.parent.parent
    system_map = tree / "boot" / f"System.map-{release}"
    run(["depmod", "-b", str(base), "-F", str(system_map), release])
    return moddir


def module_name(path: str) -> str:
    """``kernel/drivers/net/virtio_net.ko`` -> ``virtio_net`` (dashes folded)."""
    return KO_SUFFIX.sub("", path.rsplit("/", 1)[-1]).replace("-", "_")


def resolve_modules(moddir: Path, wanted: tuple[str, ...]) -> list[str]:
    """Module files (relative to ``moddir``) for ``wanted``, dependencies first.

    Built-in names are left out; an unknown name is an error.
    """
    deps: dict[str, list[str]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        module, _, needs = line.partition(":")
        deps[module] = needs.split()
    by_name = {module_name(m): m for m in deps}
    builtin = {
        module_name(line)
        for line in (moddir / "modules.builtin").read_text().splitlines()
    }
    ordered: list[str] = []

    def visit(module: str) -> None:
        for dependency in deps[module]:
            visit(dependency)
        if module not in ordered:
            ordered.append(module)

    for name in wanted:
        if name in builtin:
            continue
        if name not in by_name:
            raise BuildError(f"module {name} is neither built in nor in modules.dep")
        visit(by_name[name])
    return ordered


def write_initrd(path: Path, moddir: Path) -> None:
    """The gzipped newc initrd: busybox, /init, the modules and their index."""
    release = moddir.name
    stage = path.parent / "initrd-tree"
    install_busybox(stage)
    for name in ("dev", "proc", "sys", "newroot", "etc"):
        (stage / name).mkdir(exist_ok=True)
    shutil.copy2(HERE / "initrd" / "init", stage / "init")
    modules = resolve_modules(moddir, INITRD_MODULES)
    target = stage / "lib" / "modules" / release
    for module in modules:
        (target / module).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(moddir / module, target / module)
    for index in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        if (moddir / index).is_file():
            shutil.copy2(moddir / index, target / index)
    run(["depmod", "-b", str(stage), release])
    wanted = [n for n in INITRD_MODULES if n in {module_name(m) for m in modules}]
    (stage / "etc" / "initrd-modules").write_text("".join(f"{n}\n" for n in wanted))
    with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
        write_cpio(stage, out, devices={"dev/console": (0o020600, 5, 1)})
    shutil.rmtree(stage)


def write_rootfs(path: Path, stage: Path) -> None:
    """The ext4 root drive, through the product's image tool (and its fc-init)."""
    install_busybox(stage)
    shutil.copytree(HERE / "rootfs", stage, dirs_exist_ok=True, symlinks=True)
    for name in ("dev", "proc", "sys", "tmp", "run", "srv/www"):
        (stage / name).mkdir(parents=True, exist_ok=True)
    (stage / "tmp").chmod(0o1777)
    try:
        imagetool.build_image(
            stage, path, size=ROOTFS_SIZE, command=SERVICE_COMMAND, label=IMAGE_LABEL
        )
    except imagetool.ImageError as exc:
        raise BuildError(f"rootfs: {exc}") from exc
    shutil.rmtree(stage)


def install_busybox(stage: Path) -> None:
    """Static busybox at /bin/busybox and a symlink for each of its applets."""
    (stage / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, stage / "bin" / "busybox")
    for applet in run([str(BUSYBOX), "--list-full"]).split():
        link = stage / applet
        if "/" not in applet or link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")


# -- cpio (newc), written here so that device nodes need no mknod --------------


def write_cpio(
    stage: Path, out: gzip.GzipFile, devices: dict[str, tuple[int, int, int]]
) -> None:
    """Archive ``stage`` in the kernel's initramfs format, plus ``devices``.

    ``devices`` maps a path to ``(mode, major, minor)``. Owners are root and
    times zero, so the same tree always gives the same bytes.
    """
    inode = 1
    entries = sorted(stage.rglob("*"), key=lambda p: p.relative_to(stage).parts)
    for entry in entries:
        name = str(entry.relative_to(stage))
        info = entry.lstat()
        data = b""
        if stat.S_ISLNK(info.st_mode):
            data = os.readlink(entry).encode()
        elif stat.S_ISREG(info.st_mode):
            data = entry.read_bytes()
        out.write(cpio_header(inode, info.st_mode, len(data), name) + pad(data))
        inode += 1
    for name, (mode, major, minor) in sorted(devices.items()):
        out.write(cpio_header(inode, mode, 0, name, rdev=(major, minor)))
        inode += 1
    out.write(cpio_header(inode, 0, 0, "TRAILER!!!"))


def cpio_header(
    inode: int, mode: int, size: int, name: str, rdev: tuple[int, int] = (0, 0)
) -> bytes:
    """One newc header with its padded name."""
    encoded = name.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(mode) else 1
    fields = (inode, mode, 0, 0, nlink, 0, size, 0, 0, *rdev, len(encoded), 0)
    header = b"070701" + b"".join(b"%08x" % value for value in fields)
    return pad(header + encoded)


def pad(data: bytes) -> bytes:
    """``data`` padded with NULs to a multiple of four bytes."""
    return data + b"\0" * (-len(data) % 4)


def main(argv: list[str]) -> int:
    """Build or find the guest; print its files as JSON."""
    parser = argparse.ArgumentParser(prog="python -m tests.guest.build")
    parser.add_argument("--cache-dir", type=Path, help=f"default: ${CACHE_ENV}")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        guest = ensure_test_guest(args.cache_dir)
    except BuildError as exc:
        print(f"test guest: {exc}", file=sys.stderr)
        return 1
    info = {k: str(v) for k, v in asdict(guest).items()}
    info["seconds"] = f"{time.monotonic() - started:.1f}"
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
