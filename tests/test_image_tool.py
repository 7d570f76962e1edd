"""``firework-image``: real images from real mke2fs, read back with debugfs.

debugfs reads the ext4 file without mounting it, so what the guest would see is
checked without root-only side effects.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nodeagent import imagetool
from nodeagent.guestinit import fc_init_path
from nodeagent.imagetool import ImageError, UsageError, build_image, parse_size

MIB = 1 << 20
CLI = Path(sys.executable).parent / "firework-image"


def debugfs(image: Path, request: str) -> str:
    done = subprocess.run(
        ["debugfs", "-R", request, str(image)], capture_output=True, text=True
    )
    return done.stdout


def stat(image: Path, path: str) -> dict[str, str]:
    """Type, mode, owner, size and link target of ``path`` in ``image``."""
    out = debugfs(image, f"stat {path}")
    assert "Inode:" in out, f"{path} not in {image}"
    fields = {
        "type": re.search(r"Type: (\w+)", out),
        "mode": re.search(r"Mode:\s+(\d+)", out),
        "uid": re.search(r"User:\s+(\d+)", out),
        "gid": re.search(r"Group:\s+(\d+)", out),
        "size": re.search(r"Size: (\d+)", out),
        "target": re.search(r'Fast link dest: "([^"]*)"', out),
    }
    return {key: match.group(1) for key, match in fields.items() if match}


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), *map(str, args)], capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A small root: a file, a symlink, an executable and a /bin/sh."""
    root = tmp_path / "src"
    (root / "bin").mkdir(parents=True)
    (root / "srv").mkdir()
    (root / "srv" / "hello.txt").write_text("hello\n")
    (root / "srv" / "hello.txt").chmod(0o640)
    (root / "srv" / "link").symlink_to("hello.txt")
    (root / "bin" / "run").write_text("#!/bin/sh\necho run\n")
    (root / "bin" / "run").chmod(0o755)
    (root / "bin" / "busybox").write_text("busybox\n")
    (root / "bin" / "sh").symlink_to("busybox")
    return root


@pytest.fixture
def image(source: Path, tmp_path: Path) -> Path:
    return build_image(
        source,
        tmp_path / "root.ext4",
        size=8 * MIB,
        command=["/bin/run", "two words", "$(x)"],
        env={"MODE": "test", "TOKEN": "s3cr3t value"},
        label="testroot",
    )


# -- what goes into the image --------------------------------------------------------


def test_fc_init_is_installed_executable_and_owned_by_root(image: Path) -> None:
    info = stat(image, "/sbin/fc-init")
    assert info["type"] == "regular"
    assert (info["mode"], info["uid"], info["gid"]) == ("0755", "0", "0")
    assert debugfs(image, "cat /sbin/fc-init") == fc_init_path().read_text()


def test_files_symlinks_and_modes_are_kept(image: Path) -> None:
    assert debugfs(image, "cat /srv/hello.txt") == "hello\n"
    assert stat(image, "/srv/hello.txt")["mode"] == "0640"
    link = stat(image, "/srv/link")
    assert (link["type"], link["target"]) == ("symlink", "hello.txt")
    assert stat(image, "/bin/run")["mode"] == "0755"
    assert stat(image, "/")["uid"] == "0"


@pytest.mark.parametrize(
    ("path", "mode"),
    [
        ("/proc", "0555"),
        ("/sys", "0555"),
        ("/dev", "0755"),
        ("/run", "0755"),
        ("/tmp", "01777"),
        ("/etc", "0755"),
        ("/root", "0700"),
        ("/sbin", "0755"),
    ],
)
def test_standard_directories_are_created(image: Path, path: str, mode: str) -> None:
    info = stat(image, path)
    assert (info["type"], info["mode"]) == ("directory", mode)


def test_command_and_env_files_hold_one_entry_per_line(image: Path) -> None:
    assert debugfs(image, "cat /etc/firework/command") == "/bin/run\ntwo words\n$(x)\n"
    assert debugfs(image, "cat /etc/firework/env") == "MODE=test\nTOKEN=s3cr3t value\n"
    assert stat(image, "/etc/firework/command")["mode"] == "0644"


def test_without_command_or_env_no_files_are_written(
    source: Path, tmp_path: Path
) -> None:
    image = build_image(source, tmp_path / "bare.ext4", size=8 * MIB)
    assert "Inode:" not in debugfs(image, "stat /etc/firework/command")
    assert "Inode:" not in debugfs(image, "stat /etc/firework/env")
    assert stat(image, "/sbin/fc-init")["mode"] == "0755"


def test_existing_directories_keep_their_modes(source: Path, tmp_path: Path) -> None:
    (source / "tmp").mkdir(mode=0o700)
    (source / "tmp").chmod(0o700)
    image = build_image(source, tmp_path / "out.ext4", size=8 * MIB)
    assert stat(image, "/tmp")["mode"] == "0700"


def test_label_is_the_volume_name(image: Path) -> None:
    assert re.search(r"Filesystem volume name:\s+testroot\n", debugfs(image, "stats"))


def test_absolute_sbin_symlink_stays_inside_the_image(
    source: Path, tmp_path: Path
) -> None:
    (source / "usr" / "sbin").mkdir(parents=True)
    (source / "sbin").symlink_to("/usr/sbin")
    host_file = Path("/usr/sbin/fc-init")
    existed = host_file.exists()
    image = build_image(source, tmp_path / "merged.ext4", size=8 * MIB)
    assert stat(image, "/usr/sbin/fc-init")["mode"] == "0755"
    assert stat(image, "/sbin")["target"] == "/usr/sbin"
    assert host_file.exists() == existed


def test_a_symlinked_fc_init_is_replaced_not_written_through(
    source: Path, tmp_path: Path
) -> None:
    (source / "bin" / "busybox").write_text("the real busybox\n")
    (source / "sbin").mkdir()
    (source / "sbin" / "fc-init").symlink_to("../bin/busybox")
    image = build_image(source, tmp_path / "out.ext4", size=8 * MIB)
    assert stat(image, "/sbin/fc-init")["type"] == "regular"
    assert debugfs(image, "cat /bin/busybox") == "the real busybox\n"
    assert stat(image, "/bin/sh")["target"] == "busybox"
    assert (source / "bin" / "busybox").read_text() == "the real busybox\n"


def test_source_is_not_changed(source: Path, image: Path) -> None:
    assert sorted(p.name for p in source.iterdir()) == ["bin", "srv"]
    assert sorted(p.name for p in (source / "bin").iterdir()) == [
        "busybox",
        "run",
        "sh",
    ]


# -- size ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("64M", 64 * MIB),
        ("64m", 64 * MIB),
        ("512K", 512 * 1024),
        ("1G", 1 << 30),
        ("1048576", 1048576),
        ("auto", None),
        ("AUTO", None),
    ],
)
def test_size_parsing(text: str, size: int | None) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "1X", "-1M", "1.5M", "M", "0", "64 MB", "64MiB"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(UsageError, match="bad size"):
        parse_size(text)


def test_image_file_has_the_requested_size(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "sized.ext4"
    done = cli("build", "--source", source, "--output", out, "--size", "12M")
    assert done.returncode == 0, done.stderr
    assert out.stat().st_size == 12 * MIB
    stats = debugfs(out, "stats")
    blocks = re.search(r"Block count:\s+(\d+)", stats)
    block_size = re.search(r"Block size:\s+(\d+)", stats)
    assert blocks and block_size
    assert int(blocks.group(1)) * int(block_size.group(1)) == 12 * MIB


def test_auto_size_fits_the_content_with_room(source: Path, tmp_path: Path) -> None:
    (source / "srv" / "big").write_bytes(os.urandom(3 * MIB))
    out = build_image(source, tmp_path / "auto.ext4")
    size = out.stat().st_size
    assert size % MIB == 0
    assert 3 * MIB * 1.3 + 16 * MIB <= size <= 3 * MIB * 1.3 + 18 * MIB
    assert stat(out, "/srv/big")["size"] == str(3 * MIB)


# -- errors ---------------------------------------------------------------------------


def test_existing_output_is_not_overwritten_without_force(
    source: Path, tmp_path: Path
) -> None:
    out = tmp_path / "root.ext4"
    out.write_text("keep me")
    done = cli("build", "--source", source, "--output", out, "--size", "8M")
    assert done.returncode == 2
    assert f"output {out} exists (use --force to replace it)" in done.stderr
    assert out.read_text() == "keep me"
    forced = cli(
        "build", "--source", source, "--output", out, "--size", "8M", "--force"
    )
    assert forced.returncode == 0, forced.stderr
    assert stat(out, "/sbin/fc-init")["mode"] == "0755"


def test_bad_size_is_a_usage_error(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.ext4"
    done = cli("build", "--source", source, "--output", out, "--size", "12Q")
    assert done.returncode == 2
    assert "error: bad size '12Q': use bytes or a number with K, M or G" in done.stderr
    assert not out.exists()


def test_missing_source_is_a_usage_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    done = cli("build", "--source", missing, "--output", tmp_path / "x.ext4")
    assert done.returncode == 2
    assert f"error: source {missing} is not a directory" in done.stderr


def test_failing_mke2fs_exits_1_and_leaves_nothing_behind(
    source: Path, tmp_path: Path
) -> None:
    out_dir = tmp_path / "images"
    out_dir.mkdir()
    (source / "srv" / "big").write_bytes(os.urandom(2 * MIB))
    out = out_dir / "small.ext4"
    done = cli("build", "--source", source, "--output", out, "--size", "1M")
    assert done.returncode == 1
    assert f"firework-image: mke2fs failed for {out}" in done.stderr
    assert list(out_dir.iterdir()) == []


def test_a_failed_forced_build_keeps_the_old_image(
    source: Path, tmp_path: Path
) -> None:
    out = tmp_path / "root.ext4"
    out.write_text("old image")
    (source / "srv" / "big").write_bytes(os.urandom(2 * MIB))
    with pytest.raises(ImageError, match="mke2fs failed"):
        build_image(source, out, size=MIB, force=True)
    assert out.read_text() == "old image"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root.ext4", "src"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"command": ["/bin/run", "a\nb"]}, "empty or has a newline"),
        ({"command": ["/bin/run", ""]}, "empty or has a newline"),
        ({"env": {"1BAD": "x"}}, "env key '1BAD' is not a valid name"),
        ({"env": {"A-B": "x"}}, "env key 'A-B' is not a valid name"),
        ({"env": {"OK": "two\nlines"}}, "env OK: value has a newline or NUL"),
        ({"label": "a-label-longer-than-16"}, "longer than 16 bytes"),
    ],
)
def test_bad_requests_are_refused_before_building(
    source: Path, tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    out = tmp_path / "x.ext4"
    with pytest.raises(UsageError, match=re.escape(message)):
        build_image(source, out, size=8 * MIB, **kwargs)  # type: ignore[arg-type]
    assert not out.exists()


@pytest.mark.parametrize("sh", [None, "dangling"])
def test_missing_bin_sh_gives_a_warning(tmp_path: Path, sh: str | None) -> None:
    empty = tmp_path / "empty"
    (empty / "bin").mkdir(parents=True)
    if sh:
        (empty / "bin" / "sh").symlink_to(sh)
    out = tmp_path / "x.ext4"
    done = cli("build", "--source", empty, "--output", out, "--size", "8M")
    assert done.returncode == 0, done.stderr
    assert f"warning: {empty} has no /bin/sh, which fc-init needs" in done.stderr


def test_special_files_are_skipped_with_a_warning(source: Path, tmp_path: Path) -> None:
    os.mkfifo(source / "srv" / "fifo")
    out = tmp_path / "x.ext4"
    done = cli("build", "--source", source, "--output", out, "--size", "8M")
    assert done.returncode == 0, done.stderr
    assert "warning: skipped special file" in done.stderr
    assert "Inode:" not in debugfs(out, "stat /srv/fifo")
    assert "no /bin/sh" not in done.stderr


# -- the command line ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "lines"),
    [
        (
            ["--command", "/bin/run 'two words' \"a b\" c"],
            "/bin/run\ntwo words\na b\nc\n",
        ),
        (["--command-arg", "/bin/run", "--command-arg", "x y"], "/bin/run\nx y\n"),
    ],
)
def test_command_options_become_the_command_file(
    source: Path, tmp_path: Path, args: list[str], lines: str
) -> None:
    out = tmp_path / "x.ext4"
    done = cli("build", "--source", source, "--output", out, "--size", "8M", *args)
    assert done.returncode == 0, done.stderr
    assert f"firework-image: built {out}" in done.stdout
    assert debugfs(out, "cat /etc/firework/command") == lines


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--command", "a", "--command-arg", "b"], "not allowed with argument"),
        (["--command", "unbalanced 'quote"], "No closing quotation"),
        (["--env", "NOEQUALS"], "--env 'NOEQUALS': expected KEY=VALUE"),
        (["--env", "1A=x"], "env key '1A' is not a valid name"),
    ],
)
def test_bad_options_are_usage_errors(
    source: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "x.ext4"
    done = cli("build", "--source", source, "--output", out, "--size", "8M", *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert not out.exists()


def test_env_option_is_written_and_cli_main_returns_zero(
    source: Path, tmp_path: Path
) -> None:
    out = tmp_path / "x.ext4"
    build = ["build", "--source", str(source), "--output", str(out), "--size", "8M"]
    code = imagetool.main(
        [*build, "--env", "A=1", "--env", "B=x=y z", "--command-arg", "/bin/run"]
    )
    assert code == 0
    assert debugfs(out, "cat /etc/firework/env") == "A=1\nB=x=y z\n"


def test_inspect_shows_fc_init_command_and_env_keys_only(image: Path) -> None:
    done = cli("inspect", image)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        "fc-init: mode 0755\ncommand: /bin/run 'two words' '$(x)'\nenv keys: MODE TOKEN\n"
    )
    assert "s3cr3t" not in done.stdout


def test_inspect_of_a_non_image_fails(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_text("not ext4")
    done = cli("inspect", junk)
    assert done.returncode == 1
    assert f"firework-image: cannot read {junk} as an ext4 image" in done.stderr
