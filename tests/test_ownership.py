"""Repositories sharing an object store: each deletes only the node types it owns."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane.models import ConfigRepository, Revision
from controlplane.objectstore import LocalStore
from controlplane.runs import request_run
from tests.gitserver import GitHTTPServer, commit_tree
from tests.specrepo import base_service

pytestmark = pytest.mark.django_db


def specs(**node_types: str) -> dict[str, str | None]:
    """``services/<name>.yaml`` for each ``name=node_type``."""
    return {
        f"services/{name}.yaml": yaml.safe_dump(base_service(name, node_type=nt))
        for name, nt in node_types.items()
    }


@pytest.fixture
def origins(tmp_path: Path) -> dict[str, Path]:
    found = {"alpha": tmp_path / "alpha", "beta": tmp_path / "beta"}
    commit_tree(found["alpha"], specs(web="edge", api="backend"), "alpha")
    commit_tree(found["beta"], specs(batch="compute"), "beta")
    return found


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: Any) -> LocalStore:
    monkeypatch.setenv("FIREWORK_STORE", "local")
    monkeypatch.setenv("FIREWORK_STORE_DIR", str(tmp_path / "store"))
    settings.FIREWORK_GIT_CACHE_DIR = tmp_path / "git-cache"
    return LocalStore(tmp_path / "store")


@pytest.fixture
def repositories(
    origins: dict[str, Path], store: LocalStore
) -> Iterator[dict[str, ConfigRepository]]:
    served = {f"{name}.git": path for name, path in origins.items()}
    with GitHTTPServer(served) as server:
        yield {
            name: ConfigRepository.objects.create(
                name=name, clone_url=f"{server.url}/{name}.git"
            )
            for name in origins
        }


def run(repository: ConfigRepository, capture: Any) -> Revision:
    with capture(execute=True):
        revision = request_run(repository, trigger=Revision.Trigger.MANUAL)
    revision.refresh_from_db()
    return revision


def test_a_run_leaves_other_repositories_configs_alone(
    repositories: dict[str, ConfigRepository],
    origins: dict[str, Path],
    store: LocalStore,
    django_capture_on_commit_callbacks: Any,
) -> None:
    assert run(repositories["alpha"], django_capture_on_commit_callbacks).published
    assert run(repositories["beta"], django_capture_on_commit_callbacks).published
    assert store.list("nodes/") == [
        "nodes/backend.yaml",
        "nodes/compute.yaml",
        "nodes/edge.yaml",
    ]
    commit_tree(origins["alpha"], {"services/api.yaml": None}, "drop api")
    revision = run(repositories["alpha"], django_capture_on_commit_callbacks)
    assert revision.status == Revision.Status.SUCCEEDED
    assert revision.deleted_keys == ["nodes/backend.yaml"]
    assert store.list("nodes/") == ["nodes/compute.yaml", "nodes/edge.yaml"]


def test_a_node_type_owned_by_another_repository_is_refused(
    repositories: dict[str, ConfigRepository],
    origins: dict[str, Path],
    store: LocalStore,
    django_capture_on_commit_callbacks: Any,
) -> None:
    run(repositories["beta"], django_capture_on_commit_callbacks)
    before = store.get("nodes/compute.yaml").data
    commit_tree(origins["alpha"], specs(cruncher="compute"), "steal compute")
    revision = run(repositories["alpha"], django_capture_on_commit_callbacks)
    assert revision.status == Revision.Status.FAILED
    assert "node type compute is published by repository beta" in revision.failure
    assert store.get("nodes/compute.yaml").data == before
    assert "nodes/edge.yaml" not in store.list("nodes/")


def alpha_refused_compute_then_beta_lets_it_go(
    repositories: dict[str, ConfigRepository],
    origins: dict[str, Path],
    capture: Any,
) -> Revision:
    """Moving compute from beta to alpha, alpha first; returns alpha's refused run."""
    run(repositories["beta"], capture)
    commit_tree(origins["alpha"], specs(cruncher="compute"), "take compute")
    refused = run(repositories["alpha"], capture)
    assert refused.status == Revision.Status.FAILED
    commit_tree(origins["beta"], {"services/batch.yaml": None}, "give up compute")
    commit_tree(origins["beta"], specs(loader="ingest"), "beta keeps something")
    with capture(execute=True):
        assert run(repositories["beta"], capture).status == Revision.Status.SUCCEEDED
    return refused


def test_a_node_type_let_go_is_published_by_the_run_refused_for_it(
    repositories: dict[str, ConfigRepository],
    origins: dict[str, Path],
    store: LocalStore,
    django_capture_on_commit_callbacks: Any,
) -> None:
    refused = alpha_refused_compute_then_beta_lets_it_go(
        repositories, origins, django_capture_on_commit_callbacks
    )

    handover = Revision.objects.filter(repository=repositories["alpha"]).latest("pk")
    assert handover.trigger == Revision.Trigger.HANDOVER
    assert handover.commit_sha == refused.commit_sha
    assert handover.status == Revision.Status.SUCCEEDED
    compute = yaml.safe_load(store.get("nodes/compute.yaml").data)
    assert [s["name"] for s in compute["services"]] == ["cruncher"]


def test_an_inactive_repository_is_not_handed_a_node_type(
    repositories: dict[str, ConfigRepository],
    origins: dict[str, Path],
    store: LocalStore,
    django_capture_on_commit_callbacks: Any,
) -> None:
    alpha = repositories["alpha"]
    ConfigRepository.objects.filter(pk=alpha.pk).update(active=False)
    refused = alpha_refused_compute_then_beta_lets_it_go(
        repositories, origins, django_capture_on_commit_callbacks
    )

    assert Revision.objects.filter(repository=alpha).latest("pk").pk == refused.pk
    assert "nodes/compute.yaml" not in store.list("nodes/")


def test_a_run_refused_for_another_owner_waits(
    repositories: dict[str, ConfigRepository],
    origins: dict[str, Path],
    store: LocalStore,
    django_capture_on_commit_callbacks: Any,
) -> None:
    """Alpha's run releasing edge does not re-run beta, refused for compute."""
    run(repositories["alpha"], django_capture_on_commit_callbacks)
    commit_tree(origins["beta"], specs(cruncher="backend"), "take backend")
    refused = run(repositories["beta"], django_capture_on_commit_callbacks)
    assert refused.status == Revision.Status.FAILED

    commit_tree(origins["alpha"], {"services/web.yaml": None}, "drop edge")
    with django_capture_on_commit_callbacks(execute=True):
        run(repositories["alpha"], django_capture_on_commit_callbacks)

    latest = Revision.objects.filter(repository=repositories["beta"]).latest("pk")
    assert latest.pk == refused.pk
