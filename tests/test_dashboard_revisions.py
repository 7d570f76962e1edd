"""Revision list (filters, pages) and revision detail (problems, YAML, diffs)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone
from pytest_django import Settings

from controlplane.dashboard.runlist import PAGE_SIZE
from controlplane.models import ConfigRepository, Revision
from tests.dashboard_data import (
    COMPUTE,
    EDGE,
    ERRORS,
    GENERAL_V1,
    GENERAL_V2,
    SHA_A,
    SHA_B,
    SHA_C,
    WARNINGS,
    make_repository,
    make_revision,
    make_user,
)

S = Revision.Status


@pytest.fixture(autouse=True)
def fast_hashing(settings: Settings) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def bob_client(client: Client, db: None) -> Client:
    """Reading needs a login, not an operator."""
    client.force_login(make_user("bob"))
    return client


@pytest.fixture
def ops(db: None) -> ConfigRepository:
    return make_repository("ops-config")


def _ago(minutes: int) -> datetime:
    return timezone.now() - timedelta(minutes=minutes)


def _lines(html: str, kind: str) -> list[str]:
    """The text of the diff lines of one kind, in page order, unescaped."""
    found = re.findall(rf'<span class="line {kind}">(.*?)</span>', html)
    return [line.replace("&gt;", ">").replace("&lt;", "<") for line in found]


# The list


def test_revision_list_shows_runs_of_every_repository_newest_first(
    bob_client: Client, ops: ConfigRepository
) -> None:
    lab = make_repository("lab-config")
    first = make_revision(ops, S.SUCCEEDED, queued=_ago(30))
    second = make_revision(lab, S.FAILED, queued=_ago(20))
    third = make_revision(ops, S.RUNNING, queued=_ago(10), took=None)

    response = bob_client.get("/revisions/")

    assert response.status_code == 200
    rows = response.context["runs"].rows
    assert [row.revision for row in rows] == [third, second, first]
    assert [row.duration for row in rows] == ["", "1.25 s", "1.25 s"]
    html = response.content.decode()
    assert '<span class="badge status-running">running</span>' in html
    assert 'href="/repositories/lab-config/">lab-config</a>' in html


def test_revision_list_filters_by_status_and_repository(
    bob_client: Client, ops: ConfigRepository
) -> None:
    lab = make_repository("lab-config")
    failed = make_revision(ops, S.FAILED)
    make_revision(ops, S.SUCCEEDED)
    make_revision(lab, S.FAILED)

    response = bob_client.get("/revisions/?status=failed&repository=ops-config")

    assert [row.revision for row in response.context["runs"].rows] == [failed]
    html = response.content.decode()
    assert '<option value="failed" selected>' in html
    assert '<option value="ops-config" selected>' in html


def test_repository_page_filters_its_runs_by_status(
    bob_client: Client, ops: ConfigRepository
) -> None:
    make_revision(ops, S.SUCCEEDED)
    failed = make_revision(ops, S.FAILED)

    response = bob_client.get("/repositories/ops-config/?status=failed")

    assert [row.revision for row in response.context["runs"].rows] == [failed]
    empty = bob_client.get("/repositories/ops-config/?status=superseded")
    assert b"No superseded runs of ops-config." in empty.content


@pytest.mark.parametrize(
    "query", ["status=exploded", "status=%3Cscript%3E", "status=" + "x" * 5000]
)
def test_unknown_status_filter_is_ignored_with_a_notice(
    bob_client: Client, ops: ConfigRepository, query: str
) -> None:
    make_revision(ops, S.SUCCEEDED)

    response = bob_client.get(f"/revisions/?{query}")

    assert response.status_code == 200
    assert len(response.context["runs"].rows) == 1
    assert "showing runs of any status" in response.context["runs"].notice
    assert b"<script>" not in response.content


def test_revision_list_is_paginated_and_keeps_the_filter(
    bob_client: Client, ops: ConfigRepository
) -> None:
    for minute in range(PAGE_SIZE + 5):
        make_revision(ops, S.FAILED, queued=_ago(100 - minute))
    make_revision(ops, S.SUCCEEDED)

    first = bob_client.get("/revisions/?status=failed")
    second = bob_client.get("/revisions/?status=failed&page=2")

    assert len(first.context["runs"].rows) == PAGE_SIZE
    assert len(second.context["runs"].rows) == 5
    assert b'href="?status=failed&amp;page=2" rel="next"' in first.content
    assert b"Page 2 of 2" in second.content
    all_pks = {row.revision.pk for row in first.context["runs"].rows} | {
        row.revision.pk for row in second.context["runs"].rows
    }
    assert len(all_pks) == PAGE_SIZE + 5


@pytest.mark.parametrize("page", ["0", "-3", "abc", "999999999999999999999", "1e9"])
def test_bad_page_numbers_show_a_page_instead_of_an_error(
    bob_client: Client, ops: ConfigRepository, page: str
) -> None:
    make_revision(ops, S.SUCCEEDED)
    response = bob_client.get(f"/revisions/?page={page}")
    assert response.status_code == 200
    assert len(response.context["runs"].rows) == 1


def test_empty_revision_list_says_how_runs_start(bob_client: Client) -> None:
    response = bob_client.get("/revisions/")
    assert b"No enrichment has run yet." in response.content


@pytest.mark.parametrize("name", ["nope", "a%00b", "ops config", "%F0%9F%94%A5"])
def test_filter_without_matches_offers_every_run(
    bob_client: Client, ops: ConfigRepository, name: str
) -> None:
    make_revision(ops, S.SUCCEEDED)
    response = bob_client.get(f"/revisions/?repository={name}")
    assert response.status_code == 200
    assert response.context["runs"].rows == []
    assert b"No runs match this filter." in response.content


@pytest.mark.parametrize("query", ["status=%00", "page=%00", "repository=%00"])
def test_nul_characters_in_filters_are_not_an_error(
    bob_client: Client, ops: ConfigRepository, query: str
) -> None:
    make_revision(ops, S.SUCCEEDED)
    assert bob_client.get(f"/revisions/?{query}").status_code == 200
    assert bob_client.get(f"/repositories/ops-config/?{query}").status_code == 200


# The detail of a failed run


def test_failed_revision_groups_errors_by_file_then_service(
    bob_client: Client, ops: ConfigRepository
) -> None:
    failed = make_revision(ops, S.FAILED, errors=ERRORS, warnings=WARNINGS)

    response = bob_client.get(f"/revisions/{failed.pk}/")

    assert response.status_code == 200
    grouped = [
        (group.file, [(s.service, s.messages) for s in group.services])
        for group in response.context["errors"]
    ]
    assert grouped == [
        ("defaults.yaml", [("", ["invalid YAML (line 2)"])]),
        ("services/api.yaml", [("api", ["vcpus: must be >= 1"])]),
        (
            "services/web.yaml",
            [
                ("cache", ["duplicate TAP"]),
                ("web", ["missing image", "memory_mb: too big"]),
            ],
        ),
    ]
    assert response.context["error_count"] == 5
    html = response.content.decode()
    # Shown in the same order: file heading, then its services, then messages.
    order = [
        "<code>defaults.yaml</code>",
        "the file as a whole",
        "invalid YAML (line 2)",
        "<code>services/api.yaml</code>",
        "service <code>api</code>",
        "vcpus: must be &gt;= 1",
        "<code>services/web.yaml</code>",
        "service <code>cache</code>",
        "duplicate TAP",
        "service <code>web</code>",
        "missing image",
        "memory_mb: too big",
        "Warnings",
        "unknown field colour",
    ]
    positions = [html.index(text) for text in order]
    assert positions == sorted(positions)
    assert "Validation errors" in html
    assert "This run produced no node config." in html


def test_failed_revision_shows_why_it_failed(
    bob_client: Client, ops: ConfigRepository
) -> None:
    failed = make_revision(
        ops, S.FAILED, failure="fetching https://git.example.test: <timeout>"
    )
    html = bob_client.get(f"/revisions/{failed.pk}/").content.decode()
    assert "Why it failed" in html
    assert "fetching https://git.example.test: &lt;timeout&gt;" in html


def test_failed_revision_without_output_claims_no_removed_node_types(
    bob_client: Client, ops: ConfigRepository
) -> None:
    make_revision(ops, S.SUCCEEDED, queued=_ago(10), outputs={"compute": COMPUTE})
    failed = make_revision(ops, S.FAILED, errors=ERRORS)

    response = bob_client.get(f"/revisions/{failed.pk}/")

    assert response.context["changes"] == []
    assert b"removed node type" not in response.content


@pytest.mark.parametrize(
    "errors",
    [
        ["a plain string"],
        [{"message": "no file, no service"}],
        [{"file": None, "service": 3, "message": ["odd"]}],
        {"file": "x.yaml"},
        "just text",
        [],
    ],
)
def test_detail_renders_error_records_of_any_shape(
    bob_client: Client, ops: ConfigRepository, errors: object
) -> None:
    failed = make_revision(ops, S.FAILED, errors=errors)
    response = bob_client.get(f"/revisions/{failed.pk}/")
    assert response.status_code == 200


# The detail of a succeeded run


def test_succeeded_revision_shows_its_facts(
    bob_client: Client, ops: ConfigRepository
) -> None:
    run = make_revision(
        ops,
        S.SUCCEEDED,
        sha=SHA_C,
        delivery_id="72d3162e-cc78-11e3-81ab-4c9367dc0958",
        took=timedelta(minutes=2, seconds=5),
    )
    html = bob_client.get(f"/revisions/{run.pk}/").content.decode()
    queued = timezone.localtime(run.queued_at).strftime("%Y-%m-%d %H:%M:%S UTC")
    for text in (
        f"Run #{run.pk} of",
        f"<code>{SHA_C}</code>",
        "<code>main</code>",
        "<dd>webhook</dd>",
        "<code>72d3162e-cc78-11e3-81ab-4c9367dc0958</code>",
        "2 min 05 s",
        queued,
        '<span class="badge status-succeeded">succeeded</span>',
    ):
        assert text in html, text


def test_succeeded_revision_shows_yaml_and_diff_against_previous_success(
    bob_client: Client, ops: ConfigRepository
) -> None:
    before = make_revision(
        ops,
        S.SUCCEEDED,
        sha=SHA_A,
        queued=_ago(30),
        outputs={"general-purpose": GENERAL_V1, "compute": COMPUTE},
    )
    # A failed run in between is not what the agents ran before.
    make_revision(ops, S.FAILED, sha=SHA_B, queued=_ago(20), errors=ERRORS)
    # Another repository's success is not either.
    make_revision(make_repository("lab-config"), S.SUCCEEDED, outputs={"x": EDGE})
    run = make_revision(
        ops,
        S.SUCCEEDED,
        sha=SHA_C,
        queued=_ago(10),
        outputs={"general-purpose": GENERAL_V2, "edge": EDGE},
    )

    response = bob_client.get(f"/revisions/{run.pk}/")

    assert response.context["previous"] == before
    changes = {c.node_type: c for c in response.context["changes"]}
    assert {t: str(c.change) for t, c in changes.items()} == {
        "compute": "removed node type",
        "edge": "new node type",
        "general-purpose": "changed",
    }
    general = changes["general-purpose"]
    assert (general.added, general.removed) == (1, 1)
    html = response.content.decode()
    assert (
        f'Compared with the previous succeeded run\n    <a href="/revisions/{before.pk}/">'
        in html
    )
    assert "-    memory_mb: 512" in _lines(html, "removed")
    assert "+    memory_mb: 1024" in _lines(html, "added")
    assert f"+++ #{run.pk}/general-purpose.yaml" in _lines(html, "file")
    # The removed node type's old lines are all shown as removed.
    assert "-node: compute" in _lines(html, "removed")
    assert "+++ /dev/null" in _lines(html, "file")
    # The new node type is all additions.
    assert "+node: edge" in _lines(html, "added")
    # The published YAML is on the page, escaped.
    assert "YAML published for <code>edge</code>" in html
    assert "image: /var/lib/images/proxy-rootfs.ext4" in html
    assert html.count('<span class="badge change">removed node type</span>') == 1
    assert html.count('<span class="badge change">new node type</span>') == 1


def test_first_succeeded_revision_shows_every_node_type_as_new(
    bob_client: Client, ops: ConfigRepository
) -> None:
    run = make_revision(ops, S.SUCCEEDED, outputs={"compute": COMPUTE})

    response = bob_client.get(f"/revisions/{run.pk}/")

    assert response.context["previous"] is None
    (change,) = response.context["changes"]
    assert str(change.change) == "new node type"
    assert change.added == len(COMPUTE.splitlines())
    assert b"No earlier succeeded run of ops-config" in response.content


def test_unchanged_node_type_is_marked_without_a_diff(
    bob_client: Client, ops: ConfigRepository
) -> None:
    make_revision(ops, S.SUCCEEDED, queued=_ago(10), outputs={"compute": COMPUTE})
    run = make_revision(ops, S.SUCCEEDED, outputs={"compute": COMPUTE})

    response = bob_client.get(f"/revisions/{run.pk}/")

    (change,) = response.context["changes"]
    assert str(change.change) == "unchanged"
    assert change.lines == []
    assert b'<pre class="diff"' not in response.content
    assert b"YAML published for <code>compute</code>" in response.content


def test_succeeded_revision_publishing_nothing_lists_every_node_type_removed(
    bob_client: Client, ops: ConfigRepository
) -> None:
    make_revision(ops, S.SUCCEEDED, queued=_ago(10), outputs={"compute": COMPUTE})
    run = make_revision(ops, S.SUCCEEDED, deleted_keys=["nodes/compute.yaml"])

    response = bob_client.get(f"/revisions/{run.pk}/")

    (change,) = response.context["changes"]
    assert str(change.change) == "removed node type"
    assert change.output is None
    assert b"<code>nodes/compute.yaml</code>" in response.content


def test_queued_revision_says_it_has_not_produced_anything_yet(
    bob_client: Client, ops: ConfigRepository
) -> None:
    run = make_revision(ops, S.QUEUED, sha="", took=None)
    html = bob_client.get(f"/revisions/{run.pk}/").content.decode()
    assert "head of the branch, not resolved yet" in html
    assert "This run has not produced node configs yet." in html


def test_manual_run_shows_who_requested_it(
    bob_client: Client, ops: ConfigRepository
) -> None:
    alice = User.objects.create_user("alice")
    run = make_revision(
        ops, S.SUCCEEDED, trigger=Revision.Trigger.MANUAL, requested_by=alice
    )
    html = bob_client.get(f"/revisions/{run.pk}/").content.decode()
    assert "<dt>Requested by</dt><dd>alice</dd>" in html
    assert "<dd>manual</dd>" in html


# -- live run pages: they follow unfinished runs, then stop


DONE = "data-refresh-done"


@pytest.mark.parametrize("page", ["detail", "list", "repository", "home"])
def test_run_pages_follow_a_run_until_it_ends(
    bob_client: Client, ops: ConfigRepository, page: str
) -> None:
    run = make_revision(ops, S.QUEUED, took=None)
    url = {
        "detail": f"/revisions/{run.pk}/",
        "list": "/revisions/",
        "repository": f"/repositories/{ops.name}/",
        "home": "/",
    }[page]

    whole = bob_client.get(url).content.decode()
    assert 'data-refresh-seconds="2"' in whole
    assert "until the runs shown here end" in whole
    assert DONE not in whole
    fragment = bob_client.get(url, {"fragment": "1"}).content.decode()
    assert "<html" not in fragment and "status-queued" in fragment
    assert DONE not in fragment

    Revision.objects.filter(pk=run.pk).update(
        status=S.SUCCEEDED, finished_at=timezone.now()
    )
    fragment = bob_client.get(url, {"fragment": "1"}).content.decode()
    assert "status-succeeded" in fragment
    assert DONE in fragment
    assert "until the runs shown here end" not in bob_client.get(url).content.decode()
