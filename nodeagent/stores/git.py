"""A node config store in a Git branch, fetched incrementally with dulwich.

The first fetch clones into a bare repository under ``cache_dir``; later ones
ask only for the branch head and download nothing when it has not moved (one
ref advertisement). Files are read from the commit's tree through the object
store, so nothing is checked out and no ``git`` binary is needed.
"""

from __future__ import annotations

import logging
import re
import shutil
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

from dulwich.client import HTTPUnauthorized, get_transport_and_path
from dulwich.config import ConfigDict
from dulwich.errors import GitProtocolError, HangupException, NotGitRepository
from dulwich.objects import Blob, Commit, ObjectID, Tree
from dulwich.refs import Ref, check_ref_format
from dulwich.repo import Repo

from nodeagent.gitauth import TOKEN_USER, redact
from nodeagent.stores.base import Fetched, StoreError, check_size, node_path

log = logging.getLogger(__name__)

HTTP_TIMEOUT_SECONDS = 30
# every fetch adds a pack; past this many reads slow down, so they are merged
MAX_PACKS = 32
_ERRNO = re.compile(r"\[Errno \d+\] ([^\"')]+)")


class GitConfigStore:
    """Reads ``nodes/<label>.yaml`` at the head of ``branch``; revision = commit."""

    def __init__(
        self,
        url: str,
        branch: str,
        token: str | None,
        cache_dir: Path | str,
        *,
        timeout: float = HTTP_TIMEOUT_SECONDS,
    ) -> None:
        self.url = url
        self.token = token or ""
        self.cache_dir = Path(cache_dir)
        self.timeout = timeout
        self.ref = Ref(f"refs/heads/{branch}".encode())
        if not branch or not check_ref_format(self.ref):
            raise StoreError(f"not a valid branch name: {branch!r}", transient=False)
        self.branch = branch
        self.shown = redact(url)
        self._last: dict[str, str] = {}

    def fetch(self, label: str) -> Fetched:
        """The config of ``label``; unchanged while the branch head is the same."""
        path = node_path(label)
        with self._open() as repo:
            sha = self._fetch_head(repo)
            if self._last.get(label) == sha:
                return Fetched(label, None, sha, changed=False)
            data = self._read(repo, sha, path)
        self._last[label] = sha
        log.debug("config read label=%s commit=%s", label, sha[:12])
        return Fetched(label, data, sha, changed=True)

    def _open(self) -> Repo:
        if (self.cache_dir / "objects").is_dir():
            try:
                return Repo(str(self.cache_dir), bare=True)
            except Exception as exc:  # any damage to the cache: clone again
                log.warning("git cache unusable, recloning error=%s", exc)
                shutil.rmtree(self.cache_dir, ignore_errors=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        return Repo.init_bare(str(self.cache_dir))

    def _fetch_head(self, repo: Repo) -> str:
        """Fetch the branch head if it is new; return its SHA."""
        seen: dict[Ref, ObjectID] = {}

        def wants(
            refs: Mapping[Ref, ObjectID], depth: int | None = None
        ) -> list[ObjectID]:
            if self.ref in refs:
                seen[self.ref] = refs[self.ref]
                if refs[self.ref] not in repo.object_store:
                    return [refs[self.ref]]
            return []  # nothing new: dulwich stops after the ref advertisement

        config = ConfigDict()
        config.set((b"http",), b"timeout", str(self.timeout).encode())
        client, path = get_transport_and_path(
            self.url,
            config=config,
            username=TOKEN_USER if self.token else None,
            password=self.token or None,
        )
        self._network(lambda: client.fetch(path, repo, determine_wants=wants))
        if self.ref not in seen:
            raise StoreError(
                f"git store {self.shown}: no branch {self.branch}", transient=False
            )
        repo.refs[self.ref] = seen[self.ref]  # keeps the next fetch incremental
        if len(repo.object_store.packs) > MAX_PACKS:
            repo.object_store.repack()
        return seen[self.ref].decode()

    def _network(self, call: Callable[[], object]) -> None:
        where = f"git store {self.shown}: fetching {self.branch}"
        try:
            call()
        except HTTPUnauthorized:
            raise StoreError(
                f"{where}: access denied (check the token)", transient=False
            ) from None
        except NotGitRepository:
            raise StoreError(
                f"{where}: repository not found (or no access)", transient=False
            ) from None
        except (GitProtocolError, HangupException, OSError) as exc:
            raise StoreError(
                f"{where}: {self._scrub(exc)}", transient=_transient(exc)
            ) from None

    def _read(self, repo: Repo, sha: str, path: str) -> bytes:
        where = f"git store {self.shown}: {path} at {sha[:12]}"
        commit = repo[sha.encode()]
        if not isinstance(commit, Commit):
            raise StoreError(f"{where}: not a commit", transient=False)
        obj = repo[commit.tree]
        mode = 0
        for part in path.split("/"):
            if not isinstance(obj, Tree) or part.encode() not in obj:
                mode = 0
                break
            mode, child = obj[part.encode()]
            obj = repo[child]
        if not stat.S_ISREG(mode) or not isinstance(obj, Blob):
            raise StoreError(f"{where}: no such file", transient=False)
        check_size(where, obj.raw_length())
        return obj.as_raw_string()

    def _scrub(self, exc: Exception) -> str:
        text = str(exc) or type(exc).__name__
        errno = _ERRNO.search(text)  # urllib3 buries it in a long retry message
        if errno:
            text = errno.group(1)
        text = text.replace(self.url, self.shown)
        return text.replace(self.token, "***") if self.token else text


def _transient(exc: Exception) -> bool:
    text = str(exc)
    if "unexpected http resp 4" in text:
        return "resp 408" in text or "resp 429" in text
    return True  # network failures and server errors pass
