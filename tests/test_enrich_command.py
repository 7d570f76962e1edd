"""``manage.py enrich``: summary, output directory, publishing, Git sources, exit 1."""

from __future__ import annotations

import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
import yaml
from django.core.management import CommandError, call_command

from tests.gitserver import GitHTTPServer, commit_tree
from tests.specrepo import base_service, write_repo

EXAMPLE = Path(__file__).parent.parent / "examples" / "enricher-input"
GOLDEN = Path(__file__).parent / "golden" / "nodes"


def run(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("enrich", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_example_summary_lists_node_types_services_and_warnings() -> None:
    out, err = run(str(EXAMPLE))
    assert "node type compute: 1 service(s): report-worker" in out
    assert "node type general-purpose: 3 service(s): api, db, web" in out
    assert (
        "warning: services/report-worker.yml: service report-worker: unknown field"
        in err
    )


def test_output_directory_gets_the_node_configs(tmp_path: Path) -> None:
    out, _ = run(str(EXAMPLE), "--output", str(tmp_path))
    written = sorted(p.name for p in (tmp_path / "nodes").iterdir())
    assert written == ["compute.yaml", "general-purpose.yaml"]
    for name in written:
        assert (tmp_path / "nodes" / name).read_text() == (GOLDEN / name).read_text()
    assert f"published 2 node config(s) to {tmp_path}" in out


def test_publish_uses_the_configured_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIREWORK_STORE", "local")
    monkeypatch.setenv("FIREWORK_STORE_DIR", str(tmp_path / "store"))
    (tmp_path / "store" / "nodes").mkdir(parents=True)
    (tmp_path / "store" / "nodes" / "retired.yaml").write_text("node: retired\n")
    out, _ = run(str(EXAMPLE), "--publish")
    assert sorted(p.name for p in (tmp_path / "store" / "nodes").iterdir()) == [
        "compute.yaml",
        "general-purpose.yaml",
    ]
    assert "deleted 1 stale" in out


def test_validation_errors_are_all_listed_and_nothing_is_written(
    tmp_path: Path,
) -> None:
    repo = write_repo(
        tmp_path / "repo",
        [base_service("web", vcpus=0), base_service("api", image="rel")],
    )
    err = StringIO()
    with pytest.raises(CommandError, match="2 validation error"):
        call_command(
            "enrich",
            str(repo),
            "--output",
            str(tmp_path / "out"),
            stdout=StringIO(),
            stderr=err,
        )
    errors = err.getvalue()
    assert (
        "error: services/web.yaml: service web: vcpus: must be between 1 and 32"
        in errors
    )
    assert (
        "error: services/api.yaml: service api: image: must be an absolute path"
        in errors
    )
    assert not (tmp_path / "out").exists()


def test_empty_repository_is_not_published_without_allow_empty(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    out_dir = tmp_path / "out" / "nodes"
    out_dir.mkdir(parents=True)
    (out_dir / "gp.yaml").write_text("node: gp\n")
    with pytest.raises(CommandError, match="empty"):
        run(str(tmp_path / "repo"), "--output", str(tmp_path / "out"))
    assert (out_dir / "gp.yaml").exists()
    run(str(tmp_path / "repo"), "--output", str(tmp_path / "out"), "--allow-empty")
    assert not (out_dir / "gp.yaml").exists()


def test_git_url_is_cloned_with_the_token_from_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {"ops/services/web.yaml": yaml.safe_dump(base_service("web"))}
    sha = commit_tree(tmp_path / "origin", files, "web")
    token_file = tmp_path / "token"
    token_file.write_text("t0ken\n")
    monkeypatch.setenv("FIREWORK_GIT_TOKEN_FILE", str(token_file))
    with GitHTTPServer({"ops.git": tmp_path / "origin"}, token="t0ken") as server:
        out, _ = run(
            f"{server.url}/ops.git",
            "--subdir",
            "ops",
            "--output",
            str(tmp_path / "out"),
        )
    assert f"commit {sha}" in out
    assert (tmp_path / "out" / "nodes" / "general-purpose.yaml").exists()


def test_command_exits_1_from_the_shell(tmp_path: Path) -> None:
    repo = write_repo(tmp_path, [base_service("web", memory_mb=1)])
    done = subprocess.run(
        [sys.executable, "manage.py", "enrich", str(repo)],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).parent.parent,
    )
    assert done.returncode == 1
    assert (
        "services/web.yaml: service web: memory_mb: must be >= 128, got 1"
        in done.stderr
    )
