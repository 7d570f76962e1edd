"""Git over HTTPS for the agent and the control plane: token user and safe URLs."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

# GitHub takes any user name with a token as the password; this one is documented.
TOKEN_USER = "x-access-token"  # noqa: S105 - a user name, not a secret


def redact(url: str) -> str:
    """``url`` without any user name or password, safe to log and show."""
    parts = urlsplit(url)
    if not parts.username and not parts.password:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=host))
