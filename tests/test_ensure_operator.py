"""``manage.py ensure_operator``: the operator superuser, created once and kept."""

from __future__ import annotations

import io
import stat
from pathlib import Path

import pytest
from django.contrib.auth import authenticate
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from pytest_django import Settings

pytestmark = pytest.mark.django_db

STRONG = "violet-anchor-47-tundra"


@pytest.fixture(autouse=True)
def var_dir(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    for name in (
        "FIREWORK_ADMIN_USER",
        "FIREWORK_ADMIN_PASSWORD",
        "FIREWORK_ADMIN_PASSWORD_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    var = tmp_path / "var"
    settings.FIREWORK_VAR_DIR = var
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    return var


def run() -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("ensure_operator", stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_creates_admin_with_a_generated_password_saved_privately(var_dir: Path) -> None:
    out, _err = run()

    password_file = var_dir / "admin-password"
    password = password_file.read_text().strip()
    assert len(password) >= 20
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert f"created operator admin with password {password}" in out
    user = authenticate(username="admin", password=password)
    assert user is not None
    assert user.is_superuser
    assert user.is_staff


def test_second_run_keeps_the_account_and_its_password(var_dir: Path) -> None:
    run()
    password = (var_dir / "admin-password").read_text().strip()

    out, _err = run()

    assert out.strip() == "operator admin exists: unchanged"
    assert password not in out
    assert User.objects.count() == 1
    assert (var_dir / "admin-password").read_text().strip() == password
    assert authenticate(username="admin", password=password) is not None


def test_user_and_password_from_environment(
    var_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIREWORK_ADMIN_USER", "bob")
    monkeypatch.setenv("FIREWORK_ADMIN_PASSWORD", STRONG)

    out, _err = run()

    assert "created operator bob" in out
    assert STRONG not in out
    assert not (var_dir / "admin-password").exists()
    user = authenticate(username="bob", password=STRONG)
    assert user is not None
    assert user.is_superuser


def test_password_from_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "admin-password-secret"
    path.write_text(f"{STRONG}\n")
    monkeypatch.setenv("FIREWORK_ADMIN_PASSWORD_FILE", str(path))

    run()

    assert authenticate(username="admin", password=STRONG) is not None


def test_changed_environment_password_is_applied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    User.objects.create_superuser("admin", "", "old-password-value-1")
    monkeypatch.setenv("FIREWORK_ADMIN_PASSWORD", STRONG)

    out, _err = run()

    assert "password set from FIREWORK_ADMIN_PASSWORD" in out
    assert authenticate(username="admin", password=STRONG) is not None
    assert authenticate(username="admin", password="old-password-value-1") is None


def test_existing_account_without_environment_password_is_left_alone(
    var_dir: Path,
) -> None:
    User.objects.create_superuser("admin", "", "chosen-by-operator-9")

    out, _err = run()

    assert out.strip() == "operator admin exists: unchanged"
    assert not (var_dir / "admin-password").exists()
    assert authenticate(username="admin", password="chosen-by-operator-9")


def test_existing_plain_user_is_made_superuser() -> None:
    User.objects.create_user("admin", "", "chosen-by-operator-9")

    out, _err = run()

    assert "made superuser" in out
    user = User.objects.get(username="admin")
    assert (user.is_staff, user.is_superuser) == (True, True)


def test_deactivated_account_is_reported_not_reactivated() -> None:
    User.objects.create_superuser("admin", "", "chosen-by-operator-9", is_active=False)

    _out, err = run()

    assert "deactivated" in err
    assert User.objects.get(username="admin").is_active is False


@pytest.mark.parametrize("weak", ["x9q", "password123", "12345678901"])
def test_weak_password_is_refused_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch, weak: str
) -> None:
    monkeypatch.setenv("FIREWORK_ADMIN_PASSWORD", weak)

    with pytest.raises(CommandError, match=r"^FIREWORK_ADMIN_PASSWORD: ") as caught:
        run()

    assert weak not in str(caught.value)
    assert not User.objects.exists()


def test_password_and_password_file_together_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "pw"
    path.write_text(STRONG)
    monkeypatch.setenv("FIREWORK_ADMIN_PASSWORD", STRONG)
    monkeypatch.setenv("FIREWORK_ADMIN_PASSWORD_FILE", str(path))

    with pytest.raises(CommandError, match="both set") as caught:
        run()

    assert STRONG not in str(caught.value)
    assert not User.objects.exists()


def test_unwritable_password_file_leaves_no_account(var_dir: Path) -> None:
    var_dir.parent.mkdir(parents=True, exist_ok=True)
    var_dir.write_text("a file where the directory should be")

    with pytest.raises(CommandError, match=r"cannot save the generated password"):
        run()

    assert not User.objects.exists()
