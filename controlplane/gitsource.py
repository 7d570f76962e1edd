"""Fetch an enricher input repository with dulwich (no ``git`` binary needed)."""

from __future__ import annotations

import functools
import io
import logging
import re
from pathlib import Path
from urllib.parse import urlsplit

from dulwich import porcelain
from dulwich.client import HTTPUnauthorized
from dulwich.errors import GitProtocolError, HangupException, NotGitRepository

from nodeagent.gitauth import TOKEN_USER, redact

log = logging.getLogger(__name__)

_REMOTE = re.compile(r"^(https?|git|ssh|file)://", re.IGNORECASE)


class GitSourceError(Exception):
    """The repository could not be cloned; the message never holds credentials."""


def is_git_url(source: str) -> bool:
    """True for URLs (``https://``, ``ssh://``, ``file://``) and ``user@host:path``."""
    return bool(_REMOTE.match(source)) or bool(re.match(r"^[\w.-]+@[\w.-]+:", source))


def clone(
    url: str, dest: Path, *, branch: str | None = None, token: str | None = None
) -> str:
    """Shallow-clone ``branch`` (default: the remote HEAD) into ``dest``.

    Returns the checked-out commit SHA.
    """
    log.info("cloning repository url=%s branch=%s", redact(url), branch or "HEAD")
    try:
        run = functools.partial(
            porcelain.clone,
            url,
            str(dest),
            depth=1,
            branch=branch,
            checkout=True,
            errstream=io.BytesIO(),
        )
        repo = run(username=TOKEN_USER, password=token) if token else run()
    except HTTPUnauthorized:
        raise GitSourceError(
            f"cloning {redact(url)}: access denied (check the token)"
        ) from None
    except (GitProtocolError, HangupException, NotGitRepository, OSError) as exc:
        raise GitSourceError(_describe(url, exc)) from None
    except (KeyError, ValueError) as exc:  # how dulwich reports a missing branch
        reason = f"no branch {branch}" if branch else str(exc)
        raise GitSourceError(f"cloning {redact(url)}: {reason}") from None
    with repo:
        return repo.head().decode()


def _describe(url: str, exc: Exception) -> str:
    message = str(exc) or type(exc).__name__
    for secret in filter(None, (urlsplit(url).password, urlsplit(url).username)):
        message = message.replace(secret, "***")
    return f"cloning {redact(url)}: {message}"
