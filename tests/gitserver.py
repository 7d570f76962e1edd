"""Real Git repositories for tests: made with dulwich, served over HTTP on loopback.

dulwich's smart-HTTP WSGI app has no authentication; :class:`GitHTTPServer` adds a
Basic-auth check of a token (any user name), the way GitHub checks one.
"""

from __future__ import annotations

import base64
import hmac
import socketserver
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from dulwich import porcelain
from dulwich.repo import Repo
from dulwich.server import BackendRepo, DictBackend
from dulwich.web import make_wsgi_chain

AUTHOR = b"Firework Tests <tests@firework.invalid>"


def commit_tree(repo_dir: Path, files: Mapping[str, str | None], message: str) -> str:
    """Write (or delete, for None) ``files`` in ``repo_dir``, commit; return the SHA."""
    if not (repo_dir / ".git").exists():
        repo_dir.mkdir(parents=True, exist_ok=True)
        Repo.init(str(repo_dir), default_branch=b"main").close()
    paths = []
    for rel, text in files.items():
        target = repo_dir / rel
        if text is None:
            porcelain.remove(str(repo_dir), [str(target)])
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        paths.append(str(target))
    if paths:
        porcelain.add(str(repo_dir), paths)
    sha = porcelain.commit(
        str(repo_dir), message=message.encode(), author=AUTHOR, committer=AUTHOR
    )
    return sha.decode()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    # server_close() joins request threads, so none outlives the server (tests
    # that fork check that this process has a single thread)
    daemon_threads = False
    block_on_close = True

    def server_bind(self) -> None:
        # skip HTTPServer's reverse DNS lookup of the address (slow without DNS)
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)
        self.setup_environ()


class GitHTTPServer:
    """Serve ``repos`` (URL path -> repo dir) at ``http://127.0.0.1:<port>/``."""

    def __init__(self, repos: dict[str, Path], token: str | None = None) -> None:
        served: dict[str, BackendRepo] = {
            f"/{k}": Repo(str(v)) for k, v in repos.items()
        }
        backend = DictBackend(served)
        self.app = self._with_auth(make_wsgi_chain(backend), token)
        self.server = make_server(
            "127.0.0.1", 0, self.app, server_class=_Server, handler_class=_QuietHandler
        )
        self.requests = 0
        self.unavailable = False  # while true, answer 503 as a host in an outage
        # a short poll interval: shutdown() waits for it, in every test
        self.thread = threading.Thread(
            target=self.server.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def _with_auth(self, app: Callable[..., Iterable[bytes]], token: str | None):
        def guarded(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            self.requests += 1
            if self.unavailable:
                start_response("503 Service Unavailable", [("Content-Length", "0")])
                return [b""]
            if token is not None and not _token_ok(environ, token):
                start_response(
                    "401 Unauthorized",
                    [
                        ("WWW-Authenticate", 'Basic realm="git"'),
                        ("Content-Length", "0"),
                    ],
                )
                return [b""]
            return app(environ, start_response)

        return guarded

    def __enter__(self) -> GitHTTPServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def _token_ok(environ: dict[str, Any], token: str) -> bool:
    header = environ.get("HTTP_AUTHORIZATION", "")
    if not header.startswith("Basic "):
        return False
    try:
        _, _, password = base64.b64decode(header[6:]).decode().partition(":")
    except ValueError:
        return False
    return hmac.compare_digest(password.encode(), token.encode())
