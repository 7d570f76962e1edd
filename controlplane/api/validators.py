"""Checks of API input that the models alone do not make.

Each validator raises DRF's ``ValidationError`` with a message that says what is
allowed, so a client sees a 400 naming the field instead of a failing run later.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from rest_framework.exceptions import ValidationError

from controlplane.gitsource import is_git_url

COMMIT_SHA = re.compile(r"[0-9a-fA-F]{40}")
# git check-ref-format: no control characters, space or any of ~^:?*[\
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
BRANCH_PREFIX = "refs/heads/"

# The control plane's own secrets. A repository's secret and token are read from
# the environment by name, and the token is sent to the clone URL's host, so
# naming one of these would hand the server's credentials to that host.
RESERVED_ENV_NAMES = frozenset({"FIREWORK_ADMIN_PASSWORD"})
RESERVED_ENV_PREFIXES = ("AWS_", "CELERY_", "DATABASE_", "DJANGO_", "S3_")


def branch_name(value: str) -> str:
    """A branch name as git accepts it; ``refs/heads/main`` becomes ``main``."""
    name = value.removeprefix(BRANCH_PREFIX)
    problem = _ref_problem(name)
    if problem:
        raise ValidationError(f"not a valid branch name: {problem}")
    return name


def _ref_problem(name: str) -> str:
    if not name:
        return "empty"
    if len(name) > 255:
        return "longer than 255 characters"
    if _REF_FORBIDDEN.search(name):
        return "no spaces, control characters or any of ~ ^ : ? * [ \\"
    if ".." in name or "@{" in name or name == "@":
        return "no '..', '@{' or a lone '@'"
    if name.startswith("/") or name.endswith(("/", ".")) or "//" in name:
        return "no leading or trailing '/', no '//', no trailing '.'"
    if any(part.startswith(".") or part.endswith(".lock") for part in name.split("/")):
        return "no part may start with '.' or end with '.lock'"
    if name.startswith("-"):
        return "must not start with '-'"
    return ""


def commit_sha(value: str) -> str:
    """A full 40-character hexadecimal commit SHA, returned in lower case."""
    if not COMMIT_SHA.fullmatch(value):
        raise ValidationError("must be a full commit SHA: 40 hexadecimal characters")
    return value.lower()


def clone_url(value: str) -> str:
    """A Git URL or absolute path, without credentials in it."""
    if _CONTROL.search(value) or value != value.strip():
        raise ValidationError("must not contain spaces at the ends or control chars")
    if value.startswith("/"):
        return value
    if not is_git_url(value):
        raise ValidationError(
            "must be a Git URL (https://, ssh://, git://, file://, user@host:path) "
            "or an absolute path"
        )
    parts = urlsplit(value)
    if parts.password or (parts.scheme.lower() in {"http", "https"} and parts.username):
        raise ValidationError(
            "must not contain credentials; name an environment variable in "
            "access_token_env instead"
        )
    return value


def config_subdir(value: str) -> str:
    """A relative directory inside the repository; trailing slashes are dropped."""
    if value.startswith("/") or "\\" in value or _CONTROL.search(value):
        raise ValidationError("must be a relative path inside the repository")
    path = value.rstrip("/")
    if path and any(part in ("", ".", "..") for part in path.split("/")):
        raise ValidationError("must not contain empty, '.' or '..' parts")
    return path


def env_name(value: str) -> str:
    """An environment variable name that is not one of the control plane's own."""
    if value in RESERVED_ENV_NAMES or value.startswith(RESERVED_ENV_PREFIXES):
        raise ValidationError(
            f"{value} holds a setting of the control plane itself; "
            "use a variable of its own, e.g. FIREWORK_REPO_OPS_SECRET"
        )
    return value
