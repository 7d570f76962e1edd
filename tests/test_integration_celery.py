"""The whole run path with real parts: webhook, Redis, a Celery worker, S3, Git.

The control plane runs as processes of its own (see ``tests/celerystack.py``):
gunicorn serving the webhook and the REST API, a Celery worker taking runs from a
``redis-server``, both on a database of their own. The test pushes like GitHub
(a signed ``push`` delivery), then watches the REST API and the S3 bucket.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.celerystack import (
    FULL_NAME,
    S3Target,
    Stack,
    control_plane,
)
from tests.conftest import S3Server
from tests.gitserver import GitHTTPServer, commit_tree
from tests.specrepo import base_service

GIT_TOKEN = "ghp_integration-token-654"
PREFIX = "firework/"
WEB_KEY = f"{PREFIX}nodes/general-purpose.yaml"


class Scene:
    """The running stack, its Git origin and its bucket, as the tests use them."""

    def __init__(self, stack: Stack, origin: Path, s3: S3Server, bucket: str) -> None:
        self.stack, self.origin, self.s3, self.bucket = stack, origin, s3, bucket

    def push(self, files: dict[str, str | None], message: str) -> dict[str, Any]:
        """Commit, deliver the signed push, wait for the run; return the revision."""
        sha = commit_tree(self.origin, files, message)
        response = self.stack.plane.push(FULL_NAME, sha)
        assert response.status_code == 202, response.text
        revision = self.stack.plane.wait_finished(response.json()["revision"])
        assert revision["commit_sha"] == sha
        return revision

    def objects(self) -> dict[str, tuple[str, str]]:
        """Every object of the bucket: key -> (content, ETag)."""
        listed = self.s3.admin.list_objects_v2(Bucket=self.bucket)
        found = {}
        for item in listed.get("Contents", []):
            got = self.s3.admin.get_object(Bucket=self.bucket, Key=item["Key"])
            found[item["Key"]] = (got["Body"].read().decode(), got["ETag"])
        return found


def _spec(name: str, **fields: Any) -> str:
    return yaml.safe_dump(base_service(name, **fields))


@pytest.fixture(scope="module")
def scene(
    tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server
) -> Iterator[Scene]:
    workdir = tmp_path_factory.mktemp("stack")
    origin = workdir / "origin"
    commit_tree(origin, {"README.md": "specs of the ops team\n"}, "start")
    bucket = f"it-{uuid.uuid4().hex[:12]}"
    s3_server.admin.create_bucket(Bucket=bucket)
    target = S3Target(
        endpoint_url=s3_server.endpoint_url,
        region=s3_server.region,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        bucket=bucket,
        prefix=PREFIX,
    )
    with (
        GitHTTPServer({"ops.git": origin}, token=GIT_TOKEN) as git,
        control_plane(
            workdir,
            clone_url=f"{git.url}/ops.git",
            git_token=GIT_TOKEN,
            s3=target,
            database_base_url=os.environ.get("DATABASE_URL", ""),
            workers=2,  # two workers compete for the runs of one repository
        ) as stack,
    ):
        yield Scene(stack, origin, s3_server, bucket)
    s3_server.admin.delete_bucket(Bucket=bucket)


def test_a_signed_push_is_fetched_enriched_and_published_by_the_worker(
    scene: Scene,
) -> None:
    revision = scene.push(
        {
            "services/web.yaml": _spec("web"),
            "services/api.yaml": _spec("api", node_type="edge"),
        },
        "web and api",
    )
    assert revision["status"] == "succeeded", revision
    assert revision["trigger"] == "webhook"
    assert revision["published"] and revision["attempts"] == 1
    objects = scene.objects()
    assert set(objects) == {WEB_KEY, f"{PREFIX}nodes/edge.yaml"}
    web, web_etag = objects[WEB_KEY]
    assert [s["name"] for s in yaml.safe_load(web)["services"]] == ["web"]
    outputs = {o["node_type"]: o for o in revision["outputs"]}
    assert outputs["general-purpose"]["etag"] == web_etag
    assert outputs["edge"]["services"] == ["api"]
    # a worker process did the work, not the web process that queued it
    logs = "".join(log.read_text() for log in scene.stack.worker_logs)
    assert f"run finished revision={revision['id']} status=succeeded" in logs
    assert GIT_TOKEN not in logs + scene.stack.web_log.read_text()


def test_a_bad_push_fails_with_its_errors_and_leaves_the_published_configs(
    scene: Scene,
) -> None:
    good = scene.push({"services/web.yaml": _spec("web", vcpus=2)}, "web: 2 vcpus")
    assert good["status"] == "succeeded"
    before = scene.objects()
    revision = scene.push({"services/web.yaml": _spec("web", vcpus="many")}, "bad")
    assert revision["status"] == "failed"
    assert not revision["published"] and revision["outputs"] == []
    assert revision["errors"]
    assert {(e["file"], e["service"]) for e in revision["errors"]} == {
        ("services/web.yaml", "web")
    }
    assert scene.objects() == before


def test_a_burst_of_pushes_ends_with_the_newest_commit_published(
    scene: Scene,
) -> None:
    plane, ids, shas = scene.stack.plane, [], []
    for vcpus in range(1, 5):
        sha = commit_tree(
            scene.origin, {"services/web.yaml": _spec("web", vcpus=vcpus)}, "burst"
        )
        response = plane.push(FULL_NAME, sha)
        assert response.status_code == 202
        ids.append(response.json()["revision"])
        shas.append(sha)
    finished = [plane.wait_finished(i) for i in ids]
    runs = sorted(
        (
            datetime.fromisoformat(f["started_at"]),
            datetime.fromisoformat(f["finished_at"]),
        )
        for f in finished
        # a run put back in the queue to retry, then superseded, has no end
        if f["started_at"] and f["finished_at"]
    )
    for (_, end), (start, _) in itertools.pairwise(runs):
        assert end <= start, f"runs of one repository overlapped: {runs}"
    assert finished[-1]["status"] == "succeeded"
    assert finished[-1]["commit_sha"] == shas[-1]
    assert {f["status"] for f in finished[:-1]} <= {"succeeded", "superseded"}
    web, _ = scene.objects()[WEB_KEY]
    assert yaml.safe_load(web)["services"][0]["vcpus"] == 4
