"""Reading node configs back from the store, and which revision published them.

The dashboard, the node-config API and node status all name a config's
publisher through :mod:`controlplane.publishedconfigs`; the last test checks
that the three agree on one store and one history.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from controlplane.api.nodeconfigs import list_configs
from controlplane.dashboard.published import read_published, with_publishers
from controlplane.objectstore import LocalStore
from controlplane.publishedconfigs import (
    check_stored,
    list_stored,
    publishing_revisions,
)
from controlplane.publishedlabels import load_published
from tests.dashboard_data import (
    COMPUTE,
    GENERAL_V1,
    GENERAL_V2,
    SHA_A,
    SHA_B,
    SHA_C,
    make_repository,
    make_revision,
    sha256,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    store = LocalStore(tmp_path / "store")
    store.put("nodes/general-purpose.yaml", GENERAL_V1.encode())
    store.put("nodes/compute.yaml", COMPUTE.encode())
    store.put("nodes/README.md", b"not a node config")
    return store


def history() -> dict[str, int]:
    """Three runs of GENERAL_V1 (the middle one newest that succeeded), one failed."""
    repo = make_repository()
    now = timezone.now()
    outputs = {"general-purpose": GENERAL_V1}
    old = make_revision(
        repo, "succeeded", sha=SHA_A, queued=now - timedelta(hours=3), outputs=outputs
    )
    newest = make_revision(
        repo, "succeeded", sha=SHA_B, queued=now - timedelta(hours=2), outputs=outputs
    )
    failed = make_revision(
        repo, "failed", sha=SHA_C, queued=now - timedelta(hours=1), outputs=outputs
    )
    return {"old": old.pk, "newest": newest.pk, "failed": failed.pk}


def test_the_newest_publishing_revision_names_a_content() -> None:
    runs = history()
    general = ("general-purpose", sha256(GENERAL_V1))

    found = publishing_revisions(
        [general, ("compute", sha256(GENERAL_V1)), ("general-purpose", "0" * 64)]
    )

    assert list(found) == [general]  # same bytes under another node type: no
    assert found[general].pk == runs["newest"]
    assert found[general].repository.name == "ops-config"
    assert publishing_revisions([]) == {}


def test_every_view_names_the_same_publisher(store: LocalStore) -> None:
    runs = history()
    store.put("nodes/general-purpose.yaml", GENERAL_V1.encode())

    dashboard = {n.node_type: n for n in with_publishers(read_published(store))}
    api = {c.node_type: c for c in list_configs(store)}
    status = load_published(store, ["general-purpose", "compute"])

    assert dashboard["general-purpose"].published_by is not None
    assert dashboard["general-purpose"].published_by.pk == runs["newest"]
    assert api["general-purpose"].revision == runs["newest"]
    assert status["general-purpose"].commit == SHA_B
    assert dashboard["compute"].published_by is None
    assert api["compute"].revision is None
    assert status["compute"].commit == ""


def test_a_changed_config_has_no_publisher_until_a_run_makes_it(
    store: LocalStore,
) -> None:
    history()
    store.put("nodes/general-purpose.yaml", GENERAL_V2.encode())

    assert load_published(store, ["general-purpose"])["general-purpose"].commit == ""


def test_only_node_config_keys_are_read(store: LocalStore) -> None:
    assert [c.node_type for c in list_stored(store)] == ["compute", "general-purpose"]


def test_bad_yaml_is_an_error_naming_the_key() -> None:
    stored = check_stored("nodes/edge.yaml", b"services: [\n", '"etag"')

    assert stored.config is None
    assert stored.node_type == "edge"
    assert len(stored.errors) == 1
    assert stored.errors[0].startswith("nodes/edge.yaml: ")


def test_an_invalid_service_is_named_with_its_field() -> None:
    text = GENERAL_V1.replace("vcpus: 2", "vcpus: lots")

    stored = check_stored("nodes/general-purpose.yaml", text.encode(), "e")

    assert any("web" in error and "vcpus" in error for error in stored.errors)
    assert stored.sha256 == sha256(text)
    assert stored.text == text
