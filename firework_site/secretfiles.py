"""Secrets the control plane generates for itself and keeps in its var directory.

Like :mod:`controlplane.envvars`, this module does not import Django.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from controlplane.envvars import EnvError, env_secret

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def write_private_file(path: Path, text: str, *, replace: bool = False) -> bool:
    """Write ``text`` to ``path`` readable by the owner only; False if it exists.

    The file appears complete or not at all, so a web server and a worker
    starting together never read half a secret. With ``replace`` an existing
    file is overwritten instead.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        # mkstemp already creates the file 0600, before any byte is written.
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)  # unlike rename, fails when the target exists
        except FileExistsError:
            return False
        return True
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def read_or_create_secret(path: Path, generate: Callable[[], str]) -> str:
    """The secret stored in ``path``, generating and storing one the first time."""
    if not path.exists():
        write_private_file(path, generate())
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise EnvError(f"cannot read {path}: {reason}") from None
    if not secret:
        raise EnvError(f"{path} is empty; delete it to generate a new secret")
    return secret


def only_loopback(hosts: Iterable[str]) -> bool:
    """Whether every allowed host name points at this machine only."""
    return all(host.lower() in LOOPBACK_HOSTS for host in hosts)


def secret_key(environ: Mapping[str, str], *, may_generate: bool, path: Path) -> str:
    """Django's SECRET_KEY from ``DJANGO_SECRET_KEY``/``_FILE`` or from ``path``.

    Generating a key is allowed only where one process serves the site (a
    development or local run): replicas each generating their own key would
    reject one another's sessions and signed links.
    """
    configured = env_secret("DJANGO_SECRET_KEY", environ=environ)
    if configured:
        return configured
    if not may_generate:
        raise EnvError(
            "DJANGO_SECRET_KEY: not set; set it or DJANGO_SECRET_KEY_FILE, "
            "or FIREWORK_GENERATE_SECRET_KEY=true to keep one in the var directory"
        )
    return read_or_create_secret(path, lambda: secrets.token_urlsafe(50))
