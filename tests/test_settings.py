"""``firework_site.settings`` built from environment variables.

Settings are read once per process, so each case loads them in a fresh one.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHOWN = [
    "DEBUG",
    "ALLOWED_HOSTS",
    "SECRET_KEY",
    "DATABASES",
    "CELERY_BROKER_URL",
    "CELERY_TASK_ALWAYS_EAGER",
    "TIME_ZONE",
    "USE_TZ",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "SECURE_SSL_REDIRECT",
    "SECURE_HSTS_SECONDS",
    "X_FRAME_OPTIONS",
    "DATA_UPLOAD_MAX_MEMORY_SIZE",
    "LOGGING",
]
SCRIPT = f"""
import json
from django.conf import settings
print(json.dumps({{n: getattr(settings, n) for n in {SHOWN!r}}}, default=str))
"""


def _load(var_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DJANGO_SETTINGS_MODULE": "firework_site.settings",
        "FIREWORK_VAR_DIR": str(var_dir),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def load_settings(var_dir: Path, **env: str) -> dict[str, Any]:
    result = _load(var_dir, **env)
    assert result.returncode == 0, result.stderr
    loaded: dict[str, Any] = json.loads(result.stdout)
    return loaded


def load_error(var_dir: Path, **env: str) -> str:
    result = _load(var_dir, **env)
    assert result.returncode != 0
    return result.stderr.strip().splitlines()[-1]


def test_defaults_run_locally_without_any_service(tmp_path: Path) -> None:
    var = tmp_path / "var"
    settings = load_settings(var)
    assert settings["DEBUG"] is False
    assert settings["ALLOWED_HOSTS"] == ["127.0.0.1", "localhost"]
    assert settings["DATABASES"]["default"]["ENGINE"].endswith("sqlite3")
    assert settings["DATABASES"]["default"]["NAME"] == str(var / "firework.sqlite3")
    assert settings["CELERY_TASK_ALWAYS_EAGER"] is True
    assert settings["TIME_ZONE"] == "UTC"
    assert settings["USE_TZ"] is True
    assert settings["X_FRAME_OPTIONS"] == "DENY"
    assert settings["SESSION_COOKIE_SECURE"] is False
    assert settings["LOGGING"]["root"]["level"] == "INFO"


def test_generated_secret_key_survives_restarts(tmp_path: Path) -> None:
    var = tmp_path / "var"
    first = load_settings(var)["SECRET_KEY"]
    second = load_settings(var)["SECRET_KEY"]
    assert first == second
    key_file = var / "secret_key"
    assert key_file.read_text().strip() == first
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_secret_key_from_environment_is_not_persisted(tmp_path: Path) -> None:
    var = tmp_path / "var"
    settings = load_settings(var, DJANGO_SECRET_KEY="k" * 60)
    assert settings["SECRET_KEY"] == "k" * 60
    assert not (var / "secret_key").exists()


def test_public_hosts_require_a_configured_secret_key(tmp_path: Path) -> None:
    var = tmp_path / "var"
    error = load_error(var, ALLOWED_HOSTS="firework.example")
    assert "DJANGO_SECRET_KEY: not set" in error
    assert not (var / "secret_key").exists()


@pytest.mark.parametrize(
    "env", [{"DEBUG": "true"}, {"FIREWORK_GENERATE_SECRET_KEY": "yes"}]
)
def test_public_hosts_may_generate_a_key_when_allowed(
    tmp_path: Path, env: dict[str, str]
) -> None:
    var = tmp_path / "var"
    settings = load_settings(var, ALLOWED_HOSTS="firework.example", **env)
    assert settings["SECRET_KEY"] == (var / "secret_key").read_text().strip()


def test_services_come_from_environment_urls(tmp_path: Path) -> None:
    settings = load_settings(
        tmp_path / "var",
        DATABASE_URL="postgres://fw:pw@db:5432/firework?sslmode=require",
        CELERY_BROKER_URL="redis://redis:6379/0",
        ALLOWED_HOSTS="firework.example, www.firework.example",
        DJANGO_SECRET_KEY="k" * 60,
    )
    database = settings["DATABASES"]["default"]
    assert database["ENGINE"] == "django.db.backends.postgresql"
    assert (database["HOST"], database["NAME"]) == ("db", "firework")
    assert database["OPTIONS"] == {"sslmode": "require"}
    assert settings["CELERY_BROKER_URL"] == "redis://redis:6379/0"
    assert settings["CELERY_TASK_ALWAYS_EAGER"] is False
    assert settings["ALLOWED_HOSTS"] == ["firework.example", "www.firework.example"]


def test_database_url_can_come_from_a_file(tmp_path: Path) -> None:
    url_file = tmp_path / "database-url"
    url_file.write_text("postgres://fw:pw@db/firework\n")
    settings = load_settings(tmp_path / "var", DATABASE_URL_FILE=str(url_file))
    assert settings["DATABASES"]["default"]["PASSWORD"] == "pw"


def test_tls_switches_come_from_environment(tmp_path: Path) -> None:
    settings = load_settings(
        tmp_path / "var",
        SESSION_COOKIE_SECURE="true",
        CSRF_COOKIE_SECURE="1",
        SECURE_SSL_REDIRECT="on",
        SECURE_HSTS_SECONDS="3600",
        FIREWORK_LOG_LEVEL="debug",
    )
    assert settings["SESSION_COOKIE_SECURE"] is True
    assert settings["CSRF_COOKIE_SECURE"] is True
    assert settings["SECURE_SSL_REDIRECT"] is True
    assert settings["SECURE_HSTS_SECONDS"] == 3600
    assert settings["LOGGING"]["root"]["level"] == "DEBUG"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DEBUG": "sometimes"}, "DEBUG: must be true or false"),
        ({"DATABASE_URL": "mysql://u:pw@db/x"}, "DATABASE_URL: unsupported scheme"),
        ({"FIREWORK_LOG_LEVEL": "loud"}, "FIREWORK_LOG_LEVEL: must be one of"),
        ({"SECURE_HSTS_SECONDS": "1h"}, "SECURE_HSTS_SECONDS: must be an integer"),
    ],
)
def test_malformed_variables_stop_startup_naming_the_variable(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    error = load_error(tmp_path / "var", **env)
    assert message in error
    assert "pw" not in error
