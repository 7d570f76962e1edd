"""Typed readers for settings that come from environment variables.

Every helper takes the variable's name, a default, and optionally the mapping to
read (``os.environ`` when omitted), and raises :class:`EnvError` naming the variable
when its value cannot be used. An empty value counts as unset, so that
``FOO=`` in a compose file or a systemd unit falls back to the default.

This module must not import Django: the object store and scripts reuse it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})

POSTGRES_ENGINE = "django.db.backends.postgresql"
SQLITE_ENGINE = "django.db.backends.sqlite3"


class EnvError(ValueError):
    """A setting from the environment is malformed; the message names the variable."""


def _raw(name: str, environ: Mapping[str, str] | None) -> str:
    source = os.environ if environ is None else environ
    return source.get(name, "").strip()


def env_str(
    name: str, default: str = "", environ: Mapping[str, str] | None = None
) -> str:
    """The value of ``name`` with surrounding whitespace removed, or ``default``."""
    return _raw(name, environ) or default


def env_int(name: str, default: int, environ: Mapping[str, str] | None = None) -> int:
    """The value of ``name`` as a base-10 integer, or ``default``."""
    value = _raw(name, environ)
    if not value:
        return default
    try:
        return int(value, 10)
    except ValueError:
        raise EnvError(f"{name}: must be an integer (got {value!r})") from None


def env_bool(
    name: str, default: bool, environ: Mapping[str, str] | None = None
) -> bool:
    """The value of ``name`` as true/false, 1/0, yes/no or on/off, any case."""
    value = _raw(name, environ).lower()
    if not value:
        return default
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise EnvError(f"{name}: must be true or false (got {value!r})")


def env_list(
    name: str, default: Iterable[str] = (), environ: Mapping[str, str] | None = None
) -> list[str]:
    """The comma-separated items of ``name``, stripped, without empty items."""
    value = _raw(name, environ)
    if not value:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_choice(
    name: str,
    choices: Iterable[str],
    default: str,
    environ: Mapping[str, str] | None = None,
) -> str:
    """The one of ``choices`` that ``name`` spells, compared case-insensitively."""
    value = _raw(name, environ)
    if not value:
        return default
    options = list(choices)
    for option in options:
        if option.lower() == value.lower():
            return option
    raise EnvError(f"{name}: must be one of {', '.join(options)} (got {value!r})")


def env_secret(
    name: str, default: str = "", environ: Mapping[str, str] | None = None
) -> str:
    """A secret from ``NAME`` or from the file named by ``NAME_FILE``.

    The file's trailing newlines are dropped. Error messages never contain the
    secret, only the variable and the file name.
    """
    value = _raw(name, environ)
    file_name = _raw(f"{name}_FILE", environ)
    if value and file_name:
        raise EnvError(f"{name} and {name}_FILE are both set; set only one")
    if value:
        return value
    if not file_name:
        return default
    return _read_secret_file(f"{name}_FILE", Path(file_name))


def _read_secret_file(variable: str, path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise EnvError(f"{variable}: cannot read {path}: {reason}") from None
    except UnicodeDecodeError:
        # The decode error would quote the bytes it choked on: part of the secret.
        raise EnvError(f"{variable}: {path} is not valid UTF-8") from None
    secret = text.rstrip("\r\n")
    if not secret:
        raise EnvError(f"{variable}: {path} is empty")
    return secret


def parse_database_url(
    url: str, base_dir: Path | None = None, name: str = "DATABASE_URL"
) -> dict[str, Any]:
    """One entry of Django's ``DATABASES`` from a URL.

    Accepts ``postgres://`` and ``postgresql://`` (query parameters such as
    ``sslmode`` go to ``OPTIONS``), ``sqlite:///relative/path`` (relative to
    ``base_dir``, or to the working directory) and ``sqlite:////absolute/path``.
    The URL may hold a password, so error messages never repeat it.
    """
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        raise EnvError(f"{name}: not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme in {"postgres", "postgresql"}:
        return _postgres(parts, name)
    if scheme == "sqlite":
        return _sqlite(parts, base_dir, name)
    shown = f"{scheme!r}" if scheme else "none"
    raise EnvError(
        f"{name}: unsupported scheme {shown}; "
        "use postgres://, postgresql:// or sqlite:///"
    )


def _postgres(parts: SplitResult, name: str) -> dict[str, Any]:
    database = unquote(parts.path.lstrip("/"))
    if not database:
        raise EnvError(f"{name}: missing database name after the host")
    try:
        port = parts.port
    except ValueError:
        raise EnvError(f"{name}: port must be a number from 1 to 65535") from None
    return {
        "ENGINE": POSTGRES_ENGINE,
        "NAME": database,
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": _host(parts.netloc),
        "PORT": str(port) if port else "",
        "OPTIONS": dict(parse_qsl(parts.query)),
    }


def _host(netloc: str) -> str:
    # Not SplitResult.hostname: it lowercases, which would break a socket
    # directory given percent-encoded as the host (%2Frun%2FPostgres).
    host = netloc.rpartition("@")[2]
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return unquote(host.partition(":")[0])


def _sqlite(parts: SplitResult, base_dir: Path | None, name: str) -> dict[str, Any]:
    if parts.netloc:
        raise EnvError(
            f"{name}: use sqlite:///relative/path or sqlite:////absolute/path"
        )
    path = unquote(parts.path)[1:]  # drop the slash that ends the empty authority
    if not path:
        raise EnvError(f"{name}: missing the SQLite file path")
    if path != ":memory:" and not Path(path).is_absolute() and base_dir is not None:
        path = str(base_dir / path)
    # The web process and workers write at once: take the write lock when a
    # transaction starts (no deadlocked upgrades) and wait for it a while.
    options: dict[str, Any] = {"transaction_mode": "IMMEDIATE", "timeout": 20.0}
    options |= dict(parse_qsl(parts.query))
    try:
        options["timeout"] = float(options["timeout"])  # sqlite3 wants a number
    except ValueError:
        raise EnvError(f"{name}: timeout must be a number of seconds") from None
    return {"ENGINE": SQLITE_ENGINE, "NAME": path, "OPTIONS": options}
