"""Cached clones: first use clones, later runs fetch only what is new, over HTTP."""

from __future__ import annotations

import os
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from dulwich.objects import Blob, Commit, ObjectID, Tree
from dulwich.refs import Ref
from dulwich.repo import Repo

from controlplane.gitcache import GitCache, GitCacheError
from tests.gitserver import AUTHOR, GitHTTPServer, commit_tree
from tests.specrepo import base_service

TOKEN = "ghp_cache-test-token-456"


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    path = tmp_path / "origin"
    commit_tree(path, {"services/web.yaml": yaml.safe_dump(base_service("web"))}, "web")
    return path


@pytest.fixture
def server(origin: Path) -> Iterator[GitHTTPServer]:
    with GitHTTPServer({"ops.git": origin}, token=TOKEN) as running:
        yield running


@pytest.fixture
def cache(tmp_path: Path) -> GitCache:
    return GitCache(tmp_path / "cache")


def _url(server: GitHTTPServer) -> str:
    return f"{server.url}/ops.git"


def _pack_names(cache: GitCache) -> set[str]:
    return {p.name for p in (cache.path_for("ops") / "objects" / "pack").glob("*.pack")}


def _objects_in(cache: GitCache, pack_file: str) -> int:
    repo = Repo(str(cache.path_for("ops")))
    try:
        (pack,) = [
            p
            for p in repo.object_store.packs
            if f"{p._basename}.pack".endswith(pack_file)
        ]
        return len(pack)
    finally:
        repo.close()


def _files(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): p.read_text()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_first_use_clones_into_the_cache_and_checks_out_the_branch_head(
    cache: GitCache, server: GitHTTPServer, origin: Path
) -> None:
    head = Repo(str(origin))
    expected = head.head().decode()
    head.close()
    with cache.checkout("ops", _url(server), ref="main", token=TOKEN) as checkout:
        assert checkout.sha == expected
        assert set(_files(checkout.root)) == {"services/web.yaml"}
        assert yaml.safe_load((checkout.root / "services/web.yaml").read_text()) == (
            base_service("web")
        )
    assert not checkout.root.exists()  # the checkout is temporary
    assert (cache.path_for("ops") / "objects").is_dir()
    assert len(_pack_names(cache)) == 1


def test_second_use_fetches_only_the_new_objects(
    cache: GitCache, server: GitHTTPServer, origin: Path
) -> None:
    with cache.checkout("ops", _url(server), ref="main", token=TOKEN):
        pass
    first_packs = _pack_names(cache)
    sha = commit_tree(
        origin, {"services/api.yaml": yaml.safe_dump(base_service("api"))}, "api"
    )
    with cache.checkout("ops", _url(server), ref="main", token=TOKEN) as checkout:
        assert checkout.sha == sha
        assert set(_files(checkout.root)) == {"services/api.yaml", "services/web.yaml"}
    packs = _pack_names(cache)
    assert first_packs < packs  # not recloned: the first pack is still there
    (new_pack,) = packs - first_packs
    # commit, root tree, services/ tree and the new blob; web.yaml is not resent
    assert _objects_in(cache, new_pack) == 4


def test_a_commit_already_in_the_cache_needs_no_request(
    cache: GitCache, server: GitHTTPServer, origin: Path
) -> None:
    with cache.checkout("ops", _url(server), ref="main", token=TOKEN) as checkout:
        sha = checkout.sha
    before = server.requests
    with cache.checkout(
        "ops", _url(server), ref="main", sha=sha, token=TOKEN
    ) as checkout:
        assert checkout.sha == sha
    assert server.requests == before


def test_a_given_commit_is_checked_out_even_when_the_branch_moved_on(
    cache: GitCache, server: GitHTTPServer, origin: Path
) -> None:
    old = Repo(str(origin))
    old_sha = old.head().decode()
    old.close()
    commit_tree(origin, {"services/web.yaml": None}, "remove web")
    commit_tree(
        origin, {"services/api.yaml": yaml.safe_dump(base_service("api"))}, "api"
    )
    with cache.checkout(
        "ops", _url(server), ref="main", sha=old_sha, token=TOKEN
    ) as checkout:
        assert checkout.sha == old_sha
        assert set(_files(checkout.root)) == {"services/web.yaml"}


def test_a_commit_on_another_branch_is_found(
    cache: GitCache, server: GitHTTPServer, origin: Path
) -> None:
    repo = Repo(str(origin))
    main = repo.head()
    sha = commit_tree(origin, {"services/api.yaml": "name: api\n"}, "on a branch")
    repo.refs[Ref(b"refs/heads/feature")] = ObjectID(sha.encode())
    repo.refs[Ref(b"refs/heads/main")] = main
    repo.close()
    with cache.checkout(
        "ops", _url(server), ref="main", sha=sha, token=TOKEN
    ) as checkout:
        assert "services/api.yaml" in _files(checkout.root)


def test_a_missing_branch_is_a_permanent_error(
    cache: GitCache, server: GitHTTPServer
) -> None:
    with (
        pytest.raises(GitCacheError, match="no branch nope") as caught,
        cache.checkout("ops", _url(server), ref="nope", token=TOKEN),
    ):
        pass
    assert not caught.value.transient


def test_a_missing_commit_is_a_permanent_error(
    cache: GitCache, server: GitHTTPServer
) -> None:
    missing = "0123456789abcdef0123456789abcdef01234567"
    with (
        pytest.raises(GitCacheError, match=f"commit {missing} not found") as caught,
        cache.checkout("ops", _url(server), ref="main", sha=missing, token=TOKEN),
    ):
        pass
    assert not caught.value.transient


@pytest.mark.parametrize(
    ("ref", "sha", "message"),
    [
        ("main..x", "", "not a valid branch name"),
        ("", "", "not a valid branch name"),
        ("main", "abc123", "not a full commit SHA"),
    ],
)
def test_malformed_refs_and_shas_are_refused_before_any_request(
    cache: GitCache, server: GitHTTPServer, ref: str, sha: str, message: str
) -> None:
    with (
        pytest.raises(GitCacheError, match=message),
        cache.checkout("ops", _url(server), ref=ref, sha=sha, token=TOKEN),
    ):
        pass
    assert server.requests == 0


def test_a_wrong_token_is_a_permanent_error_without_the_token(
    cache: GitCache, server: GitHTTPServer
) -> None:
    with (
        pytest.raises(GitCacheError) as caught,
        cache.checkout("ops", _url(server), ref="main", token="wrong-token-789"),
    ):
        pass
    message = str(caught.value)
    assert message == f"fetching {_url(server)}: access denied (check the token)"
    assert not caught.value.transient


def test_credentials_in_the_clone_url_never_reach_the_message(
    cache: GitCache, server: GitHTTPServer
) -> None:
    url = _url(server).replace("http://", "http://user:hunter2@")
    with (
        pytest.raises(GitCacheError) as caught,
        cache.checkout("ops", url, ref="nope", token=TOKEN),
    ):
        pass
    assert "hunter2" not in str(caught.value)
    assert TOKEN not in str(caught.value)
    assert _url(server) in str(caught.value)


def test_an_unknown_repository_is_a_permanent_error(
    cache: GitCache, server: GitHTTPServer
) -> None:
    with (
        pytest.raises(GitCacheError, match="repository not found") as caught,
        cache.checkout("ops", f"{server.url}/other.git", ref="main", token=TOKEN),
    ):
        pass
    assert not caught.value.transient


def test_a_server_that_is_down_is_a_transient_error(
    cache: GitCache, tmp_path: Path
) -> None:
    url = "http://127.0.0.1:9/ops.git"  # port 9 (discard): connection refused
    with (
        pytest.raises(GitCacheError, match=f"fetching {url}: ") as caught,
        cache.checkout("ops", url, ref="main", token=TOKEN),
    ):
        pass
    assert caught.value.transient


class _Failing(BaseHTTPRequestHandler):
    status = 503

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    def server_bind(self) -> None:
        # plain TCP bind: HTTPServer's reverse DNS lookup is slow without DNS
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", int(self.server_address[1])


@pytest.mark.parametrize(("status", "transient"), [(503, True), (403, False)])
def test_server_errors_are_transient_and_refusals_permanent(
    cache: GitCache, status: int, transient: bool
) -> None:
    handler = type("Handler", (_Failing,), {"status": status})
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/ops.git"
    try:
        with (
            pytest.raises(GitCacheError, match=str(status)) as caught,
            cache.checkout("ops", url, ref="main"),
        ):
            pass
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert caught.value.transient is transient


def test_a_corrupt_cache_is_deleted_and_cloned_again(
    cache: GitCache, server: GitHTTPServer
) -> None:
    with cache.checkout("ops", _url(server), ref="main", token=TOKEN) as checkout:
        sha = checkout.sha
    pack_dir = cache.path_for("ops") / "objects" / "pack"
    for path in pack_dir.iterdir():
        os.chmod(path, 0o644)
        path.write_bytes(b"garbage")
    with cache.checkout(
        "ops", _url(server), ref="main", sha=sha, token=TOKEN
    ) as checkout:
        assert checkout.sha == sha
        assert set(_files(checkout.root)) == {"services/web.yaml"}
    assert all(p.stat().st_size > len(b"garbage") for p in pack_dir.iterdir())


def test_a_cache_that_is_not_a_repository_is_cloned_again(
    cache: GitCache, server: GitHTTPServer
) -> None:
    cache.path_for("ops").mkdir(parents=True)
    (cache.path_for("ops") / "junk").write_text("left over")
    with cache.checkout("ops", _url(server), ref="main", token=TOKEN) as checkout:
        assert set(_files(checkout.root)) == {"services/web.yaml"}


def test_only_the_config_subdirectory_is_written(
    cache: GitCache, server: GitHTTPServer, origin: Path
) -> None:
    commit_tree(
        origin,
        {"deploy/services/api.yaml": "name: api\n", "deploy/defaults.yaml": "{}\n"},
        "deploy dir",
    )
    with cache.checkout(
        "ops", _url(server), ref="main", token=TOKEN, subdir="deploy"
    ) as checkout:
        assert _files(checkout.root) == {
            "defaults.yaml": "{}\n",
            "services/api.yaml": "name: api\n",
        }


def test_a_missing_config_subdirectory_is_a_permanent_error(
    cache: GitCache, server: GitHTTPServer
) -> None:
    with (
        pytest.raises(GitCacheError, match="no directory 'deploy/x'") as caught,
        cache.checkout("ops", _url(server), ref="main", token=TOKEN, subdir="deploy/x"),
    ):
        pass
    assert not caught.value.transient


def _raw_commit(origin: Path, entries: list[tuple[bytes, int, bytes]]) -> str:
    """Commit a tree of ``services/`` entries built by hand (names git refuses)."""
    repo = Repo(str(origin))
    try:
        services = Tree()
        for name, mode, data in entries:
            blob = Blob.from_string(data)
            repo.object_store.add_object(blob)
            services.add(name, mode, blob.id)
        root = Tree()
        root.add(b"services", 0o040000, services.id)
        commit = Commit()
        commit.tree = root.id
        commit.parents = [repo.head()]
        commit.author = commit.committer = AUTHOR
        commit.author_time = commit.commit_time = 1_700_000_000
        commit.author_timezone = commit.commit_timezone = 0
        commit.message = b"hand-made tree"
        for obj in (services, root, commit):
            repo.object_store.add_object(obj)
        repo.refs[Ref(b"refs/heads/main")] = commit.id
        return commit.id.decode()
    finally:
        repo.close()


def test_a_symbolic_link_inside_the_tree_is_kept(
    cache: GitCache, server: GitHTTPServer, origin: Path
) -> None:
    _raw_commit(
        origin,
        [
            (b"web.yaml", 0o100644, b"name: web\n"),
            (b"alias.yaml", 0o120000, b"web.yaml"),
        ],
    )
    with cache.checkout("ops", _url(server), ref="main", token=TOKEN) as checkout:
        link = checkout.root / "services" / "alias.yaml"
        assert link.is_symlink()
        assert link.read_text() == "name: web\n"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ((b"x.yaml", 0o120000, b"../../etc/passwd"), "leads outside"),
        ((b"x.yaml", 0o120000, b"/etc/passwd"), "leads outside"),
        ((b"..", 0o100644, b"x"), "unsafe file name"),
        ((b".git", 0o100644, b"x"), "unsafe file name"),
        ((b".GIT", 0o100644, b"x"), "unsafe file name"),
    ],
)
def test_entries_that_could_escape_the_checkout_are_refused(
    cache: GitCache,
    server: GitHTTPServer,
    origin: Path,
    entry: tuple[bytes, int, bytes],
    message: str,
) -> None:
    _raw_commit(origin, [entry])
    with (
        pytest.raises(GitCacheError, match=message) as caught,
        cache.checkout("ops", _url(server), ref="main", token=TOKEN),
    ):
        pass
    assert not caught.value.transient


def test_a_repository_name_that_is_not_a_plain_name_is_refused(
    cache: GitCache, server: GitHTTPServer
) -> None:
    with (
        pytest.raises(GitCacheError, match="cannot name a cache directory"),
        cache.checkout("../x", _url(server), ref="main", token=TOKEN),
    ):
        pass
