"""The OpenAPI schema of ``/api/v1/``, its interactive docs and the browsable API."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.conf import settings
from django.contrib.staticfiles import finders
from django.core.management import call_command
from django.test import Client
from rest_framework.test import APIClient

from tests.apisupport import (
    Personas,
    make_repository,
    session_client,
)

EXPECTED_OPERATIONS = {
    ("/api/v1/repositories/", "get"): "repositories_list",
    ("/api/v1/repositories/", "post"): "repositories_create",
    ("/api/v1/repositories/{id}/", "get"): "repositories_retrieve",
    ("/api/v1/repositories/{id}/", "put"): "repositories_update",
    ("/api/v1/repositories/{id}/", "patch"): "repositories_partial_update",
    ("/api/v1/repositories/{id}/", "delete"): "repositories_destroy",
    ("/api/v1/repositories/{id}/runs/", "post"): "repositories_runs_create",
    ("/api/v1/revisions/", "get"): "revisions_list",
    ("/api/v1/revisions/", "post"): "revisions_create",
    ("/api/v1/revisions/{id}/", "get"): "revisions_retrieve",
    ("/api/v1/revisions/{id}/rerun/", "post"): "revisions_rerun_create",
    ("/api/v1/node-configs/", "get"): "node_configs_list",
    ("/api/v1/node-configs/{node_type}/", "get"): "node_configs_retrieve",
    ("/api/v1/nodes/", "get"): "nodes_list",
    ("/api/v1/nodes/", "post"): "nodes_create",
    ("/api/v1/nodes/{name}/", "get"): "nodes_retrieve",
    ("/api/v1/nodes/{name}/", "delete"): "nodes_destroy",
    ("/api/v1/nodes/{name}/actual", "get"): "nodes_actual_retrieve",
    ("/api/v1/nodes/{name}/enroll", "post"): "nodes_enroll_create",
    ("/api/v1/nodes/{name}/enrollment-tokens/", "post"): (
        "nodes_enrollment_tokens_create"
    ),
    ("/api/v1/nodes/{name}/enrollment-tokens/", "delete"): (
        "nodes_enrollment_tokens_destroy"
    ),
    ("/api/v1/nodes/{name}/revoke-tokens", "post"): "nodes_revoke_tokens_create",
    ("/api/v1/nodes/{name}/status", "post"): "nodes_status_create",
    ("/api/v1/nodes/{name}/desired", "get"): "nodes_desired_retrieve",
    ("/api/v1/services/", "get"): "services_list",
}
USERS: list[dict[str, list[str]]] = [{"tokenAuth": []}, {"cookieAuth": []}]
# Where a node token is taken too, or only it, or nothing at all.
NODE_SECURITY = {
    ("/api/v1/nodes/{name}/", "get"): [{"nodeTokenAuth": []}, *USERS],
    ("/api/v1/nodes/{name}/actual", "get"): [{"nodeTokenAuth": []}, *USERS],
    ("/api/v1/nodes/{name}/desired", "get"): [{"nodeTokenAuth": []}, *USERS],
    ("/api/v1/nodes/{name}/status", "post"): [{"nodeTokenAuth": []}],
    ("/api/v1/nodes/{name}/enroll", "post"): [{}],
}
_ASSET = re.compile(r"""<(?:script|link)\b[^>]*?\b(?:src|href)="([^"]*)\"""")


@pytest.fixture(scope="module")
def schema(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The schema as ``manage.py spectacular --validate --fail-on-warn`` writes it.

    The command raises if drf-spectacular warns about anything or the result is
    not valid OpenAPI, so getting here is the first check.
    """
    path = tmp_path_factory.mktemp("schema") / "schema.yaml"
    call_command(
        "spectacular",
        "--validate",
        "--fail-on-warn",
        "--file",
        str(path),
        stderr=io.StringIO(),
    )
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def api_operations(schema: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (path, method): operation
        for path, item in schema["paths"].items()
        if path.startswith("/api/v1/")
        for method, operation in item.items()
    }


def test_every_endpoint_is_in_the_schema_with_a_plain_operation_id(
    schema: dict[str, Any],
):
    operations = api_operations(schema)

    found = {key: op["operationId"] for key, op in operations.items()}
    assert found == EXPECTED_OPERATIONS


def test_every_operation_takes_a_token_or_a_session_and_has_a_summary(
    schema: dict[str, Any],
):
    schemes = schema["components"]["securitySchemes"]

    assert schemes["tokenAuth"]["in"] == "header"
    assert schemes["cookieAuth"]["in"] == "cookie"
    for key, operation in api_operations(schema).items():
        assert operation["security"] == NODE_SECURITY.get(key, USERS), key
        assert operation.get("summary"), key


def test_runs_answer_202_with_the_revision(schema: dict[str, Any]):
    operations = api_operations(schema)

    for key in [
        ("/api/v1/repositories/{id}/runs/", "post"),
        ("/api/v1/revisions/", "post"),
        ("/api/v1/revisions/{id}/rerun/", "post"),
    ]:
        responses = operations[key]["responses"]
        assert set(responses) == {"202", "409"}, key
        body = responses["202"]["content"]["application/json"]["schema"]
        assert body == {"$ref": "#/components/schemas/RevisionDetail"}


def test_repository_schema_names_secrets_but_never_holds_them(
    schema: dict[str, Any],
):
    fields = schema["components"]["schemas"]["Repository"]["properties"]

    assert {"webhook_secret_env", "access_token_env"} <= set(fields)
    assert fields["webhook_secret_configured"] == {
        "type": "boolean",
        "description": "whether the variable (or its _FILE) is set for the web process",
        "readOnly": True,
    }
    assert not {"webhook_secret", "access_token"} & set(fields)


def test_node_config_detail_offers_json_and_raw_yaml(schema: dict[str, Any]):
    operation = api_operations(schema)[("/api/v1/node-configs/{node_type}/", "get")]

    content = operation["responses"]["200"]["content"]
    assert content["application/yaml"]["schema"] == {"type": "string"}
    assert content["application/json"]["schema"] == {
        "$ref": "#/components/schemas/NodeConfigDetail"
    }
    assert set(operation["responses"]) == {"200", "404", "503"}


def test_schema_is_served_as_openapi(people: Personas):
    response = session_client(people.bob, with_csrf=False).get("/api/schema/")

    assert response.status_code == 200
    assert response.content.startswith(b"openapi: 3.")
    assert b"/api/v1/revisions/{id}/rerun/" in response.content


def test_docs_page_renders_with_local_assets_only(client: Client, people: Personas):
    client.force_login(people.bob)

    response = client.get("/api/docs/")

    assert response.status_code == 200
    html = response.content.decode()
    assets = _ASSET.findall(html)
    assert len(assets) >= 3  # stylesheet, bundle, preset
    static_url = "/" + settings.STATIC_URL.lstrip("/")
    for url in assets:
        assert url.startswith(static_url), url
        found = finders.find(url.removeprefix(static_url))
        assert found, f"{url} is not a static file of ours"
    assert "cdn." not in html
    assert "https://" not in html


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/",
        "/api/v1/repositories/",
        "/api/v1/repositories/{repo}/",
        "/api/v1/revisions/",
        "/api/v1/revisions/{revision}/",
        "/api/v1/node-configs/",
        "/api/v1/node-configs/general-purpose/",
    ],
)
def test_browsable_api_renders_for_a_logged_in_operator(
    people: Personas,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
):
    monkeypatch.setenv("FIREWORK_STORE", "local")
    monkeypatch.setenv("FIREWORK_STORE_DIR", str(tmp_path))
    (tmp_path / "nodes").mkdir()
    (tmp_path / "nodes" / "general-purpose.yaml").write_text(
        "node: general-purpose\nservices: []\n"
    )
    repo = make_repository("ops")
    revision = repo.revisions.create(ref="main", trigger="api")
    client: APIClient = session_client(people.alice, with_csrf=True)

    response = client.get(
        path.format(repo=repo.pk, revision=revision.pk), HTTP_ACCEPT="text/html"
    )

    assert response.status_code == 200
    assert response["Content-Type"] == "text/html; charset=utf-8"
    assert b"<html" in response.content


_PAGE_CSRF = re.compile(r'request\.headers\["X-CSRFTOKEN"\] = "([A-Za-z0-9]+)"')


def test_try_it_out_writes_with_the_docs_pages_session(people: Personas):
    """Swagger UI sends the CSRF token its page was rendered with on writes."""
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(people.alice)

    page = browser.get("/api/docs/").content.decode()
    found = _PAGE_CSRF.search(page)
    assert found is not None, "the docs page carries no CSRF token for writes"
    created = browser.post(
        "/api/v1/nodes/",
        {"name": "from-swagger", "labels": ["edge"]},
        content_type="application/json",
        HTTP_X_CSRFTOKEN=found.group(1),
    )
    refused = browser.post(
        "/api/v1/nodes/",
        {"name": "no-token", "labels": ["edge"]},
        content_type="application/json",
    )

    assert created.status_code == 201, created.content
    assert refused.status_code == 403
