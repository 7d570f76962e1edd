"""Typed settings helpers in ``controlplane.envvars``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controlplane.envvars import (
    EnvError,
    env_bool,
    env_choice,
    env_int,
    env_list,
    env_secret,
    env_str,
    parse_database_url,
)

SECRET = "s3cr3t-value"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, "fallback"),
        ({"NAME": ""}, "fallback"),
        ({"NAME": "   "}, "fallback"),
        ({"NAME": "value"}, "value"),
        ({"NAME": "  padded  "}, "padded"),
        ({"OTHER": "value"}, "fallback"),
    ],
)
def test_env_str(environ: dict[str, str], expected: str) -> None:
    assert env_str("NAME", "fallback", environ) == expected


def test_helpers_read_os_environ_when_no_mapping_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FIREWORK_TEST_VALUE", "17")
    assert env_int("FIREWORK_TEST_VALUE", 0) == 17
    assert env_str("FIREWORK_TEST_VALUE") == "17"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("", 5), ("0", 0), ("42", 42), (" 7 ", 7), ("-3", -3), ("+8", 8)],
)
def test_env_int(value: str, expected: int) -> None:
    assert env_int("COUNT", 5, {"COUNT": value}) == expected


@pytest.mark.parametrize("value", ["4.2", "ten", "0x10", "1e3", "1_000_000x"])
def test_env_int_rejects_non_integers_naming_the_variable(value: str) -> None:
    with pytest.raises(EnvError, match=r"^COUNT: must be an integer"):
        env_int("COUNT", 5, {"COUNT": value})


@pytest.mark.parametrize(
    "value", ["true", "True", "TRUE", "1", "yes", "YES", "on", "On", " true "]
)
def test_env_bool_true_spellings(value: str) -> None:
    assert env_bool("FLAG", False, {"FLAG": value}) is True


@pytest.mark.parametrize(
    "value", ["false", "False", "FALSE", "0", "no", "No", "off", "OFF"]
)
def test_env_bool_false_spellings(value: str) -> None:
    assert env_bool("FLAG", True, {"FLAG": value}) is False


@pytest.mark.parametrize("default", [True, False])
def test_env_bool_unset_or_empty_gives_the_default(default: bool) -> None:
    assert env_bool("FLAG", default, {}) is default
    assert env_bool("FLAG", default, {"FLAG": ""}) is default


@pytest.mark.parametrize("value", ["maybe", "2", "tru", "y", "n", "enabled", "-1"])
def test_env_bool_rejects_other_words_naming_the_variable(value: str) -> None:
    with pytest.raises(EnvError, match=r"^FLAG: must be true or false"):
        env_bool("FLAG", False, {"FLAG": value})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", ["default.example"]),
        ("a.example", ["a.example"]),
        ("a.example,b.example", ["a.example", "b.example"]),
        (" a.example , b.example ", ["a.example", "b.example"]),
        ("a.example,,b.example,", ["a.example", "b.example"]),
        (",", []),
    ],
)
def test_env_list(value: str, expected: list[str]) -> None:
    assert env_list("HOSTS", ["default.example"], {"HOSTS": value}) == expected


def test_env_list_returns_a_fresh_copy_of_the_default() -> None:
    default = ("x",)
    result = env_list("HOSTS", default, {})
    result.append("y")
    assert env_list("HOSTS", default, {}) == ["x"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("", "INFO"), ("debug", "DEBUG"), ("Warning", "WARNING"), ("ERROR", "ERROR")],
)
def test_env_choice_matches_case_insensitively(value: str, expected: str) -> None:
    levels = ["DEBUG", "INFO", "WARNING", "ERROR"]
    assert env_choice("LEVEL", levels, "INFO", {"LEVEL": value}) == expected


def test_env_choice_rejects_unknown_values_listing_the_choices() -> None:
    with pytest.raises(EnvError, match=r"^LEVEL: must be one of DEBUG, INFO"):
        env_choice("LEVEL", ["DEBUG", "INFO"], "INFO", {"LEVEL": "verbose"})


# env_secret ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (f"{SECRET}\n", SECRET),
        (f"{SECRET}\r\n", SECRET),
        (f"{SECRET}\n\n", SECRET),
        (SECRET, SECRET),
        ("two words\n", "two words"),
        ("  spaced  \n", "  spaced  "),
        ("line1\nline2\n", "line1\nline2"),
    ],
)
def test_env_secret_reads_the_file_dropping_trailing_newlines(
    tmp_path: Path, content: str, expected: str
) -> None:
    path = tmp_path / "secret"
    path.write_text(content)
    assert env_secret("TOKEN", environ={"TOKEN_FILE": str(path)}) == expected


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"TOKEN": SECRET}, SECRET),
        ({"TOKEN": SECRET, "TOKEN_FILE": ""}, SECRET),
        ({}, "fallback"),
        ({"TOKEN": "", "TOKEN_FILE": ""}, "fallback"),
    ],
)
def test_env_secret_from_the_variable_or_the_default(
    environ: dict[str, str], expected: str
) -> None:
    assert env_secret("TOKEN", "fallback", environ) == expected


def test_env_secret_refuses_both_the_variable_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("other\n")
    with pytest.raises(EnvError) as caught:
        env_secret("TOKEN", environ={"TOKEN": SECRET, "TOKEN_FILE": str(path)})
    message = str(caught.value)
    assert "TOKEN and TOKEN_FILE are both set" in message
    assert SECRET not in message


def test_env_secret_names_the_variable_when_the_file_is_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(EnvError, match=r"^TOKEN_FILE: cannot read .*nope"):
        env_secret("TOKEN", environ={"TOKEN_FILE": str(missing)})


def test_env_secret_names_the_variable_when_the_file_is_a_directory(
    tmp_path: Path,
) -> None:
    with pytest.raises(EnvError, match=r"^TOKEN_FILE: cannot read"):
        env_secret("TOKEN", environ={"TOKEN_FILE": str(tmp_path)})


def test_env_secret_error_for_undecodable_file_hides_the_content(
    tmp_path: Path,
) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"\xffAB\xfe-secret-bytes")
    with pytest.raises(EnvError) as caught:
        env_secret("TOKEN", environ={"TOKEN_FILE": str(path)})
    message = str(caught.value)
    assert message.startswith("TOKEN_FILE:")
    assert "secret-bytes" not in message
    assert "0xff" not in message
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


@pytest.mark.parametrize("content", ["", "\n", "\r\n\n"])
def test_env_secret_refuses_an_empty_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "secret"
    path.write_text(content)
    with pytest.raises(EnvError, match=r"^TOKEN_FILE: .* is empty"):
        env_secret("TOKEN", environ={"TOKEN_FILE": str(path)})


# parse_database_url ----------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgres://firework:pw@db.example:5433/firework",
            {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": "firework",
                "USER": "firework",
                "PASSWORD": "pw",
                "HOST": "db.example",
                "PORT": "5433",
                "OPTIONS": {},
            },
        ),
        (
            "postgresql://u%40corp:p%3Aw%2Fd%40%25@db/app%2Ddb",
            {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": "app-db",
                "USER": "u@corp",
                "PASSWORD": "p:w/d@%",
                "HOST": "db",
                "PORT": "",
                "OPTIONS": {},
            },
        ),
        (
            "postgres://u@db/app?sslmode=require&connect_timeout=5",
            {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": "app",
                "USER": "u",
                "PASSWORD": "",
                "HOST": "db",
                "PORT": "",
                "OPTIONS": {"sslmode": "require", "connect_timeout": "5"},
            },
        ),
        (
            "postgres://%2Frun%2FPostgreSQL/app",
            {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": "app",
                "USER": "",
                "PASSWORD": "",
                "HOST": "/run/PostgreSQL",
                "PORT": "",
                "OPTIONS": {},
            },
        ),
        (
            "postgres://u:pw@[::1]:5432/app",
            {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": "app",
                "USER": "u",
                "PASSWORD": "pw",
                "HOST": "::1",
                "PORT": "5432",
                "OPTIONS": {},
            },
        ),
        (
            "POSTGRES://u@DB.Example/app",
            {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": "app",
                "USER": "u",
                "PASSWORD": "",
                "HOST": "DB.Example",
                "PORT": "",
                "OPTIONS": {},
            },
        ),
    ],
)
def test_parse_database_url_postgres(url: str, expected: dict[str, Any]) -> None:
    assert parse_database_url(url) == expected


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("sqlite:////var/lib/firework/db.sqlite3", "/var/lib/firework/db.sqlite3"),
        ("sqlite:///var/db.sqlite3", "/base/var/db.sqlite3"),
        ("sqlite:///db.sqlite3", "/base/db.sqlite3"),
        ("sqlite:///my%20db.sqlite3", "/base/my db.sqlite3"),
        ("sqlite:///:memory:", ":memory:"),
    ],
)
def test_parse_database_url_sqlite(url: str, name: str) -> None:
    parsed = parse_database_url(url, base_dir=Path("/base"))
    assert parsed == {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": name,
        "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 20.0},
    }


def test_parse_database_url_sqlite_relative_without_base_dir_stays_relative() -> None:
    assert parse_database_url("sqlite:///var/db.sqlite3")["NAME"] == "var/db.sqlite3"


def test_parse_database_url_sqlite_options() -> None:
    parsed = parse_database_url(
        "sqlite:////tmp/db.sqlite3?timeout=5&init_command=PRAGMA+foreign_keys%3DON"
    )
    assert parsed["OPTIONS"] == {
        "transaction_mode": "IMMEDIATE",
        "timeout": 5.0,
        "init_command": "PRAGMA foreign_keys=ON",
    }


def test_parse_database_url_sqlite_bad_timeout() -> None:
    with pytest.raises(EnvError, match="timeout must be a number"):
        parse_database_url("sqlite:////tmp/db.sqlite3?timeout=soon")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://u:pw@db/app", r"unsupported scheme 'mysql'"),
        ("redis://db:6379/0", r"unsupported scheme 'redis'"),
        ("", r"unsupported scheme none"),
        ("/var/db.sqlite3", r"unsupported scheme none"),
        ("postgres://u:pw@db", r"missing database name"),
        ("postgres://u:pw@db/", r"missing database name"),
        ("postgres://u:pw@db:99999/app", r"port must be a number"),
        ("postgres://u:pw@db:port/app", r"port must be a number"),
        ("sqlite://", r"missing the SQLite file path"),
        ("sqlite:///", r"missing the SQLite file path"),
        ("sqlite://host/db.sqlite3", r"sqlite:///relative/path"),
        ("postgres://u:pw@[::1/app", r"not a valid URL"),
    ],
)
def test_parse_database_url_errors_name_the_variable_not_the_password(
    url: str, message: str
) -> None:
    with pytest.raises(EnvError, match=message) as caught:
        parse_database_url(url)
    assert str(caught.value).startswith("DATABASE_URL: ")
    assert "pw" not in str(caught.value)


def test_parse_database_url_error_uses_the_given_variable_name() -> None:
    with pytest.raises(EnvError, match=r"^REPLICA_URL: unsupported scheme"):
        parse_database_url("mssql://x/y", name="REPLICA_URL")
