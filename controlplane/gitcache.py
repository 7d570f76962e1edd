"""Cached clones of config repositories, fetched incrementally with dulwich.

Each repository gets one bare clone under the cache directory, named after the
repository. A run fetches only the objects it lacks (none at all when the commit
it asks for is already there), then writes the tree of that commit, or of one
directory in it, to a temporary directory for the enrichment pipeline.

A cache that cannot be read is deleted and cloned again. Errors are
:class:`GitCacheError` with a message that never holds a credential, and a
``transient`` flag telling the caller whether trying again later may help.
"""

from __future__ import annotations

import fcntl
import logging
import posixpath
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dulwich.client import (
    HTTPProxyUnauthorized,
    HTTPUnauthorized,
    get_transport_and_path,
)

if TYPE_CHECKING:
    from dulwich.client import DetermineWantsFunc
from dulwich.config import ConfigDict
from dulwich.errors import GitProtocolError, HangupException, NotGitRepository
from dulwich.objects import Blob, Commit, ObjectID, Tree
from dulwich.refs import Ref, check_ref_format
from dulwich.repo import Repo

from nodeagent.gitauth import TOKEN_USER, redact

log = logging.getLogger(__name__)

HTTP_TIMEOUT_SECONDS = 30
# Every fetch adds a pack; past this many, reads slow down, so they are merged.
MAX_PACKS = 32
HEADS = b"refs/heads/"
_SHA = re.compile(r"^[0-9a-f]{40}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HTTP_STATUS = re.compile(r"unexpected http resp (\d{3})")
_TRANSIENT_STATUS = frozenset({408, 425, 429})


class GitCacheError(Exception):
    """A repository could not be fetched or checked out.

    ``transient`` is true for failures that may go away (network, timeouts,
    server errors) and false for those that will not (access denied, no such
    branch or commit, a tree that cannot be written safely).
    """

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class Checkout:
    """A commit written to disk: its SHA and the directory holding its files."""

    sha: str
    root: Path


@dataclass(frozen=True)
class _Source:
    """Where to fetch from, and the secret that must never reach a message."""

    url: str
    token: str

    @property
    def shown(self) -> str:
        return redact(self.url)

    def scrub(self, text: str) -> str:
        """``text`` with the token and any credentials of the URL removed."""
        text = text.replace(self.url, self.shown)
        return text.replace(self.token, "***") if self.token else text


class GitCache:
    """Bare clones under ``base_dir``, one per repository name."""

    def __init__(
        self, base_dir: Path, *, timeout: float = HTTP_TIMEOUT_SECONDS
    ) -> None:
        self.base_dir = Path(base_dir)
        self.timeout = timeout

    def path_for(self, name: str) -> Path:
        """The directory of the cached clone of repository ``name``."""
        if not _NAME.match(name):
            raise GitCacheError(
                f"repository name {name!r} cannot name a cache directory",
                transient=False,
            )
        return self.base_dir / name

    @contextmanager
    def checkout(
        self,
        name: str,
        url: str,
        *,
        ref: str,
        sha: str = "",
        token: str = "",
        subdir: str = "",
    ) -> Iterator[Checkout]:
        """Fetch as needed and yield ``sha`` (or the head of ``ref``) on disk.

        Only ``subdir`` of the commit is written when given. The directory is
        removed when the context ends.
        """
        self.path_for(name)  # refuses a name that is not a plain directory name
        refname = _refname(ref)
        if sha and not _SHA.match(sha):
            raise GitCacheError(f"not a full commit SHA: {sha!r}", transient=False)
        source = _Source(url, token)
        work = Path(tempfile.mkdtemp(prefix=f"firework-{name}-"))
        try:
            with self._locked(name):
                resolved = self._prepare(name, source, refname, sha, subdir, work)
            yield Checkout(sha=resolved, root=work / "tree")
        finally:
            shutil.rmtree(work, ignore_errors=True)

    @contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        # Runs of one repository are already serialised by the database; the
        # lock also covers two processes sharing a cache outside of a run.
        path = self.path_for(name)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        with open(self.base_dir / f".{path.name}.lock", "wb") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _prepare(
        self,
        name: str,
        source: _Source,
        refname: Ref,
        sha: str,
        subdir: str,
        work: Path,
    ) -> str:
        path = self.path_for(name)
        for attempt in (1, 2):
            dest = work / "tree"
            shutil.rmtree(dest, ignore_errors=True)
            try:
                with _open_cache(path) as repo:
                    resolved = self._resolve(repo, source, refname, sha)
                    write_tree(repo, resolved, subdir, dest)
                    return resolved
            except GitCacheError:
                raise
            except Exception as exc:
                # Anything else comes from reading the cache itself: start over
                # from an empty one, once.
                reason = source.scrub(f"{type(exc).__name__}: {exc}")
                if attempt == 2:
                    raise GitCacheError(
                        f"reading the clone of {source.shown}: {reason}",
                        transient=True,
                    ) from None
                log.warning(
                    "git cache unusable, recloning repository=%s error=%s",
                    name,
                    reason,
                )
                shutil.rmtree(path, ignore_errors=True)
        raise AssertionError("unreachable")

    def _resolve(self, repo: Repo, source: _Source, refname: Ref, sha: str) -> str:
        if sha and _has_commit(repo, sha):
            return sha  # commits never change: no need to ask the server
        heads = self._fetch(repo, source, refname, exact=True)
        if not sha:
            if refname not in heads:
                branch = refname.removeprefix(HEADS).decode(errors="replace")
                raise GitCacheError(
                    f"fetching {source.shown}: no branch {branch}", transient=False
                )
            return heads[refname].decode()
        if _has_commit(repo, sha):
            return sha
        # Pushed to another branch, or the branch moved on since: try them all.
        self._fetch(repo, source, Ref(HEADS), exact=False)
        if _has_commit(repo, sha):
            return sha
        raise GitCacheError(
            f"fetching {source.shown}: commit {sha} not found", transient=False
        )

    def _fetch(
        self, repo: Repo, source: _Source, prefix: Ref, *, exact: bool
    ) -> dict[Ref, ObjectID]:
        """Fetch ``prefix`` (or every ref under it) and keep it as a local ref."""
        wanted: dict[Ref, ObjectID] = {}

        def determine_wants(
            refs: Mapping[Ref, ObjectID], depth: int | None = None
        ) -> list[ObjectID]:
            for ref, value in refs.items():
                if ref == prefix or (not exact and ref.startswith(prefix)):
                    wanted[ref] = value
            store = repo.object_store
            return [value for value in set(wanted.values()) if value not in store]

        _network(
            source, lambda: self._client_fetch(repo, source, prefix, determine_wants)
        )
        for ref, value in wanted.items():
            repo.refs[ref] = value  # local refs make the next fetch incremental
        if len(repo.object_store.packs) > MAX_PACKS:
            repo.object_store.repack()
        log.debug("fetched url=%s refs=%d", source.shown, len(wanted))
        return wanted

    def _client_fetch(
        self,
        repo: Repo,
        source: _Source,
        prefix: Ref,
        determine_wants: DetermineWantsFunc,
    ) -> None:
        config = ConfigDict()
        config.set((b"http",), b"timeout", str(self.timeout).encode())
        client, path = get_transport_and_path(
            source.url,
            config=config,
            username=TOKEN_USER if source.token else None,
            password=source.token or None,
        )
        client.fetch(path, repo, determine_wants=determine_wants, ref_prefix=[prefix])


def _refname(ref: str) -> Ref:
    full = Ref((ref if ref.startswith("refs/") else f"refs/heads/{ref}").encode())
    if not ref or not check_ref_format(full):
        raise GitCacheError(f"not a valid branch name: {ref!r}", transient=False)
    return full


@contextmanager
def _open_cache(path: Path) -> Iterator[Repo]:
    if path.exists():
        repo = Repo(str(path), bare=True)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        repo = Repo.init_bare(str(path), mkdir=True)
        log.info("git cache created path=%s", path)
    try:
        yield repo
    finally:
        repo.close()


def _has_commit(repo: Repo, sha: str) -> bool:
    key = ObjectID(sha.encode())
    return key in repo.object_store and isinstance(repo[key], Commit)


def _network(source: _Source, fetch: Callable[[], None]) -> None:
    """Run ``fetch``, turning what the server or network says into GitCacheError."""
    where = f"fetching {source.shown}"
    try:
        fetch()
    except (HTTPUnauthorized, HTTPProxyUnauthorized):
        raise GitCacheError(
            f"{where}: access denied (check the token)", transient=False
        ) from None
    except NotGitRepository:
        raise GitCacheError(
            f"{where}: repository not found (or no access to it)", transient=False
        ) from None
    except GitProtocolError as exc:
        raise GitCacheError(
            f"{where}: {source.scrub(str(exc))}", transient=_protocol_transient(exc)
        ) from None
    except (ConnectionError, TimeoutError) as exc:
        reason = source.scrub(str(exc)) or type(exc).__name__
        raise GitCacheError(f"{where}: {reason}", transient=True) from None


def _protocol_transient(exc: GitProtocolError) -> bool:
    if isinstance(exc, HangupException):
        return True
    status = _HTTP_STATUS.search(str(exc))
    if status is None:
        return True  # the connection failed (refused, reset, timed out)
    code = int(status.group(1))
    return code >= 500 or code in _TRANSIENT_STATUS


def write_tree(repo: Repo, sha: str, subdir: str, dest: Path) -> None:
    """Write the files of commit ``sha`` (only ``subdir`` if given) under ``dest``.

    Regular files and symbolic links that stay inside ``dest`` are written;
    submodules are skipped; a link that leads outside is an error.
    """
    commit = repo[sha.encode()]
    if not isinstance(commit, Commit):
        raise GitCacheError(f"{sha} is not a commit", transient=False)
    tree = _subtree(repo, commit.tree, subdir, sha)
    dest.mkdir(parents=True)
    _write_entries(repo, tree, dest, "")


def _subtree(repo: Repo, tree_id: bytes, subdir: str, sha: str) -> Tree:
    tree = repo[tree_id]
    for part in [p for p in subdir.split("/") if p]:
        try:
            mode, child = tree[part.encode()] if isinstance(tree, Tree) else (0, b"")
        except KeyError:
            mode = 0
        if not stat.S_ISDIR(mode):
            raise GitCacheError(
                f"commit {sha[:12]}: no directory {subdir!r}", transient=False
            )
        tree = repo[child]
    if not isinstance(tree, Tree):
        raise ValueError(f"tree of commit {sha} is a {type(tree).__name__}")
    return tree


def _write_entries(repo: Repo, tree: Tree, dest: Path, rel: str) -> None:
    for entry in tree.iteritems():
        name = _entry_name(entry.path, rel)
        path, child_rel = dest / name, posixpath.join(rel, name)
        if stat.S_ISDIR(entry.mode):
            subtree = repo[entry.sha]
            if not isinstance(subtree, Tree):
                raise ValueError(f"{child_rel} is not a tree")
            path.mkdir()
            _write_entries(repo, subtree, path, child_rel)
        elif stat.S_ISLNK(entry.mode):
            _write_link(child_rel, _blob(repo, entry.sha, child_rel), path)
        elif stat.S_ISREG(entry.mode):
            path.write_bytes(_blob(repo, entry.sha, child_rel))
        # anything else is a submodule (gitlink): its files are not in this repo


def _entry_name(raw: bytes, rel: str) -> str:
    try:
        name = raw.decode()
    except UnicodeDecodeError:
        name = ""
    if name in ("", ".", "..") or "/" in name or "\0" in name or name.lower() == ".git":
        shown = raw.decode(errors="replace")
        raise GitCacheError(
            f"{posixpath.join(rel, shown)}: unsafe file name in the repository",
            transient=False,
        )
    return name


def _blob(repo: Repo, sha: bytes, rel: str) -> bytes:
    blob = repo[sha]
    if not isinstance(blob, Blob):
        raise ValueError(f"{rel} is not a blob")
    return blob.as_raw_string()


def _write_link(rel: str, target: bytes, path: Path) -> None:
    text = target.decode(errors="replace")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), text))
    if text.startswith("/") or resolved == ".." or resolved.startswith("../"):
        raise GitCacheError(
            f"{rel}: symbolic link to {text!r} leads outside the config directory",
            transient=False,
        )
    path.symlink_to(text)
