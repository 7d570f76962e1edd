"""``manage.py setup_example`` (used by ``make run``): a local repo, registered, run."""

from __future__ import annotations

from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from dulwich.object_store import iter_tree_contents
from dulwich.objects import Commit
from dulwich.repo import Repo

from controlplane.models import ConfigRepository, Revision
from controlplane.objectstore import LocalStore

pytestmark = pytest.mark.django_db(transaction=True)  # the run starts at commit


@pytest.fixture
def var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: Any) -> Path:
    monkeypatch.setenv("FIREWORK_STORE", "local")
    monkeypatch.setenv("FIREWORK_STORE_DIR", str(tmp_path / "store"))
    settings.FIREWORK_VAR_DIR = tmp_path / "var"
    settings.FIREWORK_GIT_CACHE_DIR = tmp_path / "var" / "git"
    return tmp_path


def setup_example(*args: str) -> str:
    out = StringIO()
    call_command("setup_example", *args, stdout=out)
    return out.getvalue()


def test_the_example_is_committed_registered_enriched_and_published(var: Path) -> None:
    out = setup_example()
    repository = ConfigRepository.objects.get(name="example")
    assert repository.clone_url == (var / "var" / "repos" / "example").as_uri()
    revision = Revision.objects.get(repository=repository)
    assert f"revision {revision.pk}: succeeded" in out
    assert revision.trigger == Revision.Trigger.MANUAL
    assert LocalStore(var / "store").list("nodes/") == [
        "nodes/compute.yaml",
        "nodes/general-purpose.yaml",
    ]


def test_unchanged_specs_make_no_new_commit(var: Path) -> None:
    first = setup_example("--no-run")
    second = setup_example("--no-run")
    sha = first.split("at commit ")[1].strip()
    assert f"updated repository example at commit {sha}" in second
    assert not Revision.objects.exists()


def test_changed_specs_are_committed_and_deleted_files_leave_the_tree(
    var: Path, tmp_path: Path
) -> None:
    source = tmp_path / "specs"
    (source / "services").mkdir(parents=True)
    (source / "services" / "a.yaml").write_text("name: a\n")
    first = setup_example("--source", str(source), "--no-run")
    (source / "services" / "a.yaml").unlink()
    (source / "services" / "b.yaml").write_text("name: b\n")
    second = setup_example("--source", str(source), "--no-run")
    assert first.split("at commit ")[1] != second.split("at commit ")[1]
    with Repo(str(var / "var" / "repos" / "example")) as repo:
        commit = repo[repo.head()]
        assert isinstance(commit, Commit)
        paths = [e.path for e in iter_tree_contents(repo.object_store, commit.tree)]
    assert paths == [b"services/b.yaml"]
