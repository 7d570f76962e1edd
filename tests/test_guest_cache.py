"""Pruning the test-guest cache (``tests/guest/build.py``), on a fake cache tree.

No guest is built here: the directories carry only what pruning reads.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tests.guest.build import META_FILE, PRUNE_AFTER, deb_name, prune, used

PACKAGE = "linux-image-6.1.0-30-cloud-amd64"


def fake_guest(root: Path, key: str, version: str, age: float) -> Path:
    directory = root / key
    directory.mkdir(parents=True)
    meta = {"version": version, "package": f"{PACKAGE}={version}", "key": key}
    (directory / META_FILE).write_text(json.dumps(meta))
    stamp(directory, age)
    return directory


def fake_deb(root: Path, version: str, age: float) -> Path:
    deb = root / "debs" / deb_name(PACKAGE, version)
    deb.parent.mkdir(exist_ok=True)
    deb.write_bytes(b"!<arch>\n")
    stamp(deb, age)
    return deb


def stamp(path: Path, age: float) -> None:
    at = time.time() - age
    os.utime(path, (at, at))


def test_long_unused_guests_builds_and_debs_go(tmp_path: Path) -> None:
    week = PRUNE_AFTER
    new = fake_guest(tmp_path, "a" * 16, "6.1.1", age=0)
    recent = fake_guest(tmp_path, "b" * 16, "6.1.2", age=week / 2)
    old = fake_guest(tmp_path, "c" * 16, "6.1.3", age=week * 2)
    failed_build = tmp_path / ".build-dddddddddddddddd-x1"
    failed_build.mkdir()
    stamp(failed_build, week * 2)
    kept_deb = fake_deb(tmp_path, "6.1.2", age=week * 2)  # a kept guest's kernel
    old_deb = fake_deb(tmp_path, "6.1.3", age=week * 2)
    fresh_deb = fake_deb(tmp_path, "6.1.9", age=0)
    lock = tmp_path / ".lock"
    lock.touch()
    stamp(lock, week * 2)

    removed = prune(tmp_path, keep=new)

    assert sorted(removed) == sorted([old, failed_build, old_deb])
    assert new.is_dir() and recent.is_dir()
    assert kept_deb.is_file() and fresh_deb.is_file() and lock.is_file()
    assert not old.exists() and not failed_build.exists() and not old_deb.exists()


def test_the_guest_just_built_stays_however_old_its_files(tmp_path: Path) -> None:
    built = fake_guest(tmp_path, "e" * 16, "6.1.4", age=PRUNE_AFTER * 3)

    assert prune(tmp_path, keep=built) == []
    assert built.is_dir()


def test_using_a_guest_stamps_it(tmp_path: Path) -> None:
    guest_dir = fake_guest(tmp_path, "f" * 16, "6.1.5", age=PRUNE_AFTER * 2)

    guest = used(guest_dir)

    assert guest.version == "6.1.5"
    assert time.time() - guest_dir.stat().st_mtime < 60
    assert prune(tmp_path, keep=tmp_path / ("0" * 16)) == []
