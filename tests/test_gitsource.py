"""Cloning enricher input with dulwich: local and over HTTP with a token."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from controlplane.enrichment import run_pipeline
from controlplane.gitsource import GitSourceError, clone, is_git_url
from nodeagent.gitauth import redact
from tests.gitserver import GitHTTPServer, commit_tree
from tests.specrepo import base_service

TOKEN = "ghp_test-token-123"


@pytest.fixture
def spec_repo(tmp_path: Path) -> tuple[Path, str]:
    files = {"services/web.yaml": yaml.safe_dump(base_service("web"))}
    sha = commit_tree(tmp_path / "origin", files, "add web")
    return tmp_path / "origin", sha


def test_clone_over_http_with_token_checks_out_the_head(
    tmp_path: Path, spec_repo: tuple[Path, str]
) -> None:
    origin, sha = spec_repo
    with GitHTTPServer({"ops.git": origin}, token=TOKEN) as server:
        got = clone(f"{server.url}/ops.git", tmp_path / "c", token=TOKEN)
    assert got == sha
    result = run_pipeline(tmp_path / "c")
    assert result.services == {"general-purpose": ["web"]}


def test_clone_follows_new_commits_on_a_branch(
    tmp_path: Path, spec_repo: tuple[Path, str]
) -> None:
    origin, _ = spec_repo
    sha = commit_tree(
        origin, {"services/api.yaml": yaml.safe_dump(base_service("api"))}, "api"
    )
    with GitHTTPServer({"ops.git": origin}) as server:
        got = clone(f"{server.url}/ops.git", tmp_path / "c", branch="main")
    assert got == sha
    assert (tmp_path / "c" / "services" / "api.yaml").exists()


def test_wrong_token_is_a_clear_error_without_the_token(
    tmp_path: Path, spec_repo: tuple[Path, str]
) -> None:
    origin, _ = spec_repo
    with (
        GitHTTPServer({"ops.git": origin}, token=TOKEN) as server,
        pytest.raises(GitSourceError) as caught,
    ):
        clone(f"{server.url}/ops.git", tmp_path / "c", token="wrong-token")
    message = str(caught.value)
    assert message.startswith(f"cloning {server.url}/ops.git: ")
    assert "wrong-token" not in message and TOKEN not in message


def test_credentials_in_the_url_never_reach_the_message(tmp_path: Path) -> None:
    url = "http://user:s3cret@127.0.0.1:9/ops.git"  # port 9 (discard): refused
    with pytest.raises(GitSourceError) as caught:
        clone(url, tmp_path / "c")
    assert "s3cret" not in str(caught.value)
    assert "http://127.0.0.1:9/ops.git" in str(caught.value)


def test_missing_branch_is_an_error(
    tmp_path: Path, spec_repo: tuple[Path, str]
) -> None:
    origin, _ = spec_repo
    with (
        GitHTTPServer({"ops.git": origin}) as server,
        pytest.raises(GitSourceError, match="nope"),
    ):
        clone(f"{server.url}/ops.git", tmp_path / "c", branch="nope")


@pytest.mark.parametrize(
    ("source", "remote"),
    [
        ("https://github.com/o/r.git", True),
        ("ssh://git@host/r.git", True),
        ("git@github.com:o/r.git", True),
        ("file:///srv/r.git", True),
        ("examples/enricher-input", False),
        ("/abs/path", False),
    ],
)
def test_is_git_url(source: str, remote: bool) -> None:
    assert is_git_url(source) is remote


def test_redact_removes_user_and_password() -> None:
    assert redact("https://u:p@h.example:8443/r.git") == "https://h.example:8443/r.git"
    assert redact("https://h.example/r.git") == "https://h.example/r.git"
