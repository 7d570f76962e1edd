"""The QEMU side of the Firecracker double without booting anything: the command
line it builds from a VM configuration, and the test guest builder's module
resolution and cache (the booting tests are in ``tests/test_qemu_guest.py``).
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.fcdouble.qemu import kernel_cmdline, qemu_argv, split_init_args
from tests.guest import build

# -- the QEMU command line, without QEMU ---------------------------------------------

GUEST_MAC = "06:00:0a:5b:00:02"
KERNEL = "/k/vmlinux"
INITRD = "/k/initrd"


def vm_config(
    *,
    boot_args: str | None = "console=ttyS0",
    initrd: str | None = INITRD,
    drives: list[dict[str, Any]] | None = None,
    ifaces: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A ``GET /vm/config`` document with the fields the builder reads."""
    return {
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 256},
        "boot-source": {
            "kernel_image_path": KERNEL,
            "initrd_path": initrd,
            "boot_args": boot_args,
        },
        "drives": drives or [],
        "network-interfaces": ifaces or [],
    }


def drive(ident: str, path: str, *, root: bool = False, ro: bool = False) -> Any:
    """A drive entry as ``GET /vm/config`` shows it."""
    return {
        "drive_id": ident,
        "path_on_host": path,
        "is_root_device": root,
        "is_read_only": ro,
        "partuuid": None,
    }


TCG = "tsc_early_khz=2000000"
ROOT = drive("rootfs", "/img/root.ext4", root=True)
CMDLINES = [
    pytest.param(
        vm_config(drives=[ROOT]),
        f"console=ttyS0 root=/dev/vda rw pci=off {TCG}",
        id="rw-root",
    ),
    pytest.param(
        vm_config(drives=[drive("rootfs", "/r", root=True, ro=True)]),
        f"console=ttyS0 root=/dev/vda ro pci=off {TCG}",
        id="ro-root",
    ),
    pytest.param(
        vm_config(boot_args="console=ttyS0 pci=off -- /bin/sh -c 'x y'", drives=[ROOT]),
        f"console=ttyS0 pci=off root=/dev/vda rw {TCG} -- /bin/sh -c 'x y'",
        id="before-init-args",
    ),
    pytest.param(vm_config(), f"console=ttyS0 pci=off {TCG}", id="no-root-drive"),
    pytest.param(
        vm_config(boot_args=None),
        "reboot=k panic=1 nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux"
        f" i8042.dumbkbd swiotlb=noforce pci=off {TCG}",
        id="firecracker-default-args",
    ),
]


@pytest.mark.parametrize(("config", "expected"), CMDLINES)
def test_kernel_cmdline_appends_what_firecracker_appends(
    config: dict[str, Any], expected: str
) -> None:
    assert kernel_cmdline(config) == expected


@pytest.mark.parametrize(
    ("line", "parts"),
    [
        ("a b", ("a b", None)),
        ("a -- b c", ("a", "b c")),
        ("a -- b -- c", ("a", "b -- c")),
        ("-- b", ("", "b")),
        ("a --x", ("a --x", None)),
    ],
)
def test_split_init_args_cuts_at_the_first_double_dash(
    line: str, parts: tuple[str, str | None]
) -> None:
    assert split_init_args(line) == parts


def option_values(argv: list[str], option: str) -> list[str]:
    """Every value given to ``option`` in ``argv``."""
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == option]


def test_argv_boots_root_drive_first_and_maps_every_device() -> None:
    data = drive("data", "/img/data,1.img", ro=True)
    nic = {"iface_id": "eth0", "host_dev_name": "fw-tap0", "guest_mac": GUEST_MAC}
    argv = qemu_argv(
        vm_config(drives=[data, ROOT], ifaces=[nic]),
        qmp="q1",
        resolve_path=lambda path: f"/jail{path}",
    )
    assert argv[:2] == ["qemu-system-x86_64", "-accel"]
    assert option_values(argv, "-m") == ["256"]
    assert option_values(argv, "-smp") == ["2"]
    assert option_values(argv, "-kernel") == [f"/jail{KERNEL}"]
    assert option_values(argv, "-initrd") == [f"/jail{INITRD}"]
    assert "-no-reboot" in argv
    assert option_values(argv, "-drive") == [
        "id=drive-rootfs,file=/jail/img/root.ext4,format=raw,if=none,file.locking=off"
        ",cache=unsafe",
        "id=drive-data,file=/jail/img/data,,1.img,format=raw,if=none,"
        "file.locking=off,cache=unsafe,readonly=on",
    ]
    assert option_values(argv, "-netdev") == [
        "tap,id=net-eth0,ifname=fw-tap0,script=no,downscript=no"
    ]
    assert option_values(argv, "-device") == [
        "i8042",
        "virtio-blk-device,drive=drive-rootfs",
        "virtio-blk-device,drive=drive-data",
        f"virtio-net-device,netdev=net-eth0,mac={GUEST_MAC}",
    ]


def test_argv_without_initrd_or_network_has_neither() -> None:
    argv = qemu_argv(vm_config(initrd=None, drives=[ROOT]), qmp="q1")
    assert "-initrd" not in argv
    assert "-netdev" not in argv
    assert option_values(argv, "-drive") == [
        "id=drive-rootfs,file=/img/root.ext4,format=raw,if=none,file.locking=off"
        ",cache=unsafe"
    ]


def test_argv_maps_cache_type_rate_limiter_and_smt() -> None:
    limited = ROOT | {
        "cache_type": "Writeback",
        "rate_limiter": {
            "bandwidth": {"size": 10_485_760, "refill_time": 500},  # 20 MiB/s
            "ops": {"size": 100, "refill_time": 1000, "one_time_burst": 500},
        },
    }
    unlimited = drive("data", "/img/data.img") | {
        "rate_limiter": {"bandwidth": {"size": 4096, "refill_time": 0}}
    }
    config = vm_config(drives=[limited, unlimited])
    config["machine-config"] |= {"vcpu_count": 4, "smt": True}

    argv = qemu_argv(config, qmp="q1")

    assert option_values(argv, "-smp") == ["4,cores=2,threads=2"]
    assert option_values(argv, "-drive") == [
        "id=drive-rootfs,file=/img/root.ext4,format=raw,if=none,file.locking=off"
        ",cache=writeback,throttling.bps-total=20971520,throttling.iops-total=100",
        "id=drive-data,file=/img/data.img,format=raw,if=none,file.locking=off"
        ",cache=unsafe",
    ]


# -- the guest builder, without building ---------------------------------------------


def write_module_tree(moddir: Path) -> None:
    """A tiny ``lib/modules/<release>`` with a dependency chain and a built-in."""
    moddir.mkdir(parents=True)
    (moddir / "modules.dep").write_text(
        "kernel/net/virtio_net.ko: kernel/net/net_failover.ko kernel/virtio/virtio.ko\n"
        "kernel/net/net_failover.ko: kernel/net/failover.ko\n"
        "kernel/net/failover.ko:\n"
        "kernel/virtio/virtio.ko: kernel/virtio/virtio_ring.ko\n"
        "kernel/virtio/virtio_ring.ko:\n"
        "kernel/virtio/virtio-mmio.ko: kernel/virtio/virtio.ko\n"
    )
    (moddir / "modules.builtin").write_text("kernel/fs/ext4/ext4.ko\n")


def test_initrd_modules_come_with_their_dependencies_first(tmp_path: Path) -> None:
    moddir = tmp_path / "lib/modules/6.1.0-test"
    write_module_tree(moddir)
    assert build.resolve_modules(moddir, ("virtio_mmio", "virtio_net", "ext4")) == [
        "kernel/virtio/virtio_ring.ko",
        "kernel/virtio/virtio.ko",
        "kernel/virtio/virtio-mmio.ko",
        "kernel/net/failover.ko",
        "kernel/net/net_failover.ko",
        "kernel/net/virtio_net.ko",
    ]
    with pytest.raises(build.BuildError, match="module nosuch is neither built in"):
        build.resolve_modules(moddir, ("nosuch",))


def test_guest_cache_builds_once_per_key_under_parallel_callers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "input.txt"
    source.write_text("one")
    builds: list[str] = []

    def fake_build(out: Path, package: str, version: str, key: str, debs: Path) -> None:
        time.sleep(0.2)  # long enough for the other callers to queue on the lock
        builds.append(key)
        meta = {"version": "6.1.0-test", "package": f"{package}={version}", "key": key}
        (out / build.META_FILE).write_text(json.dumps(meta))

    monkeypatch.setattr(build, "kernel_package", lambda: ("linux-image-x", "1"))
    monkeypatch.setattr(build, "build_inputs", lambda: [source])
    monkeypatch.setattr(build, "build", fake_build)
    cache = tmp_path / "cache"
    with ThreadPoolExecutor(4) as pool:
        guests = list(pool.map(lambda _: build.ensure_test_guest(cache), range(4)))
    assert len(builds) == 1
    assert {g.rootfs for g in guests} == {cache / builds[0] / "rootfs.ext4"}
    assert not [p for p in cache.iterdir() if p.name.startswith(".build-")]
    source.write_text("two")  # a changed input is a new guest
    assert build.ensure_test_guest(cache).key != builds[0]
    assert len(builds) == 2
