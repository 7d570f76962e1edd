"""Generated secrets kept in the var directory (``firework_site.secretfiles``)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from controlplane.envvars import EnvError
from firework_site.secretfiles import (
    only_loopback,
    read_or_create_secret,
    secret_key,
    write_private_file,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_private_file_is_owner_only_and_creates_the_directory(
    tmp_path: Path,
) -> None:
    path = tmp_path / "var" / "secret"
    assert write_private_file(path, "abc") is True
    assert path.read_text() == "abc\n"
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700


def test_write_private_file_keeps_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("first\n")
    assert write_private_file(path, "second") is False
    assert path.read_text() == "first\n"


def test_write_private_file_replaces_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("first\n")
    path.chmod(0o644)
    assert write_private_file(path, "second", replace=True) is True
    assert path.read_text() == "second\n"
    assert _mode(path) == 0o600


def test_write_private_file_leaves_no_temp_files(tmp_path: Path) -> None:
    write_private_file(tmp_path / "a", "1")
    write_private_file(tmp_path / "a", "2")
    write_private_file(tmp_path / "a", "3", replace=True)
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_read_or_create_secret_generates_once(tmp_path: Path) -> None:
    path = tmp_path / "key"
    calls = []

    def generate():
        calls.append(1)
        return f"generated-{len(calls)}"

    assert read_or_create_secret(path, generate) == "generated-1"
    assert read_or_create_secret(path, generate) == "generated-1"
    assert calls == [1]


def test_read_or_create_secret_refuses_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("\n")
    with pytest.raises(EnvError, match="is empty"):
        read_or_create_secret(path, lambda: "new")


@pytest.mark.parametrize(
    ("hosts", "expected"),
    [
        (["127.0.0.1", "localhost"], True),
        (["LOCALHOST", "::1", "[::1]"], True),
        ([], True),
        (["127.0.0.1", "firework.example"], False),
        (["*"], False),
        ([".example.com"], False),
        (["0.0.0.0"], False),
    ],
)
def test_only_loopback(hosts: list[str], expected: bool) -> None:
    assert only_loopback(hosts) is expected


def test_secret_key_prefers_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "secret_key"
    key = secret_key({"DJANGO_SECRET_KEY": "from-env"}, may_generate=True, path=path)
    assert key == "from-env"
    assert not path.exists()


def test_secret_key_reads_the_file_variable(tmp_path: Path) -> None:
    source = tmp_path / "mounted"
    source.write_text("from-file\n")
    key = secret_key(
        {"DJANGO_SECRET_KEY_FILE": str(source)},
        may_generate=False,
        path=tmp_path / "secret_key",
    )
    assert key == "from-file"


def test_secret_key_is_generated_once_and_persisted(tmp_path: Path) -> None:
    path = tmp_path / "var" / "secret_key"
    first = secret_key({}, may_generate=True, path=path)
    second = secret_key({}, may_generate=True, path=path)
    assert first == second
    assert len(first) >= 50
    assert _mode(path) == 0o600


def test_secret_key_unset_without_permission_to_generate_is_an_error(
    tmp_path: Path,
) -> None:
    path = tmp_path / "secret_key"
    with pytest.raises(EnvError, match=r"^DJANGO_SECRET_KEY: not set"):
        secret_key({}, may_generate=False, path=path)
    assert not path.exists()
