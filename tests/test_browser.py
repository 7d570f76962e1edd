"""The dashboard in a real browser: Debian's Chromium driven by Playwright.

The app is served by pytest-django's ``live_server`` on 127.0.0.1; the browser is
``/usr/bin/chromium`` (``apt-get install chromium fonts-dejavu-core``), never a
downloaded one. Every test saves screenshots under ``artifacts/screenshots/``.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect
from pytest_django.live_server_helper import LiveServer

from controlplane.models import Revision
from controlplane.objectstore import LocalStore
from tests.browsersupport import SCREENSHOTS
from tests.dashboard_data import (
    COMPUTE,
    EDGE,
    ERRORS,
    GENERAL_V1,
    GENERAL_V2,
    PASSWORD,
    SHA_A,
    SHA_B,
    SHA_C,
    WARNINGS,
    WIRED,
    make_repository,
    make_revision,
    make_user,
    queued_tasks,
    tasks_queued_not_run,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def history() -> dict[str, Revision]:
    """A repository whose runs went: succeeded, failed, succeeded with changes."""
    ops = make_repository("ops-config")
    make_repository("lab-config", branch="develop", active=False)
    now = timezone.now()
    first = make_revision(
        ops,
        Revision.Status.SUCCEEDED,
        sha=SHA_A,
        queued=now - timedelta(hours=2),
        outputs={"general-purpose": GENERAL_V1, "compute": COMPUTE},
    )
    failed = make_revision(
        ops,
        Revision.Status.FAILED,
        sha=SHA_B,
        queued=now - timedelta(hours=1),
        errors=ERRORS,
        warnings=WARNINGS,
        failure="refusing to publish: 5 validation error(s)",
    )
    fixed = make_revision(
        ops,
        Revision.Status.SUCCEEDED,
        sha=SHA_C,
        queued=now - timedelta(minutes=3),
        outputs={"general-purpose": GENERAL_V2, "edge": EDGE},
    )
    return {"first": first, "failed": failed, "fixed": fixed}


def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def log_in(page: Page, live_server: LiveServer, next_path: str = "/") -> None:
    make_user("alice", staff=True)
    page.goto(f"{live_server.url}{next_path}")
    expect(page).to_have_url(f"{live_server.url}/accounts/login/?next={next_path}")
    shot(page, "01-login")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()


def test_operator_logs_in_and_sees_the_repositories(
    page: Page, live_server: LiveServer, history: dict[str, Revision]
) -> None:
    log_in(page, live_server)

    expect(page).to_have_url(f"{live_server.url}/")
    expect(page.get_by_role("heading", name="Config repositories")).to_be_visible()
    ops = page.get_by_role("row").filter(has_text="ops-config")
    expect(ops.locator(".badge.status-succeeded")).to_have_text("succeeded")
    expect(ops.get_by_role("button", name="Run ops-config now")).to_be_visible()
    lab = page.get_by_role("row").filter(has_text="lab-config")
    expect(lab).to_contain_text("never run")
    expect(lab.locator(".badge.inactive")).to_be_visible()
    # The stylesheet is served and applied: the badge is green, not plain text.
    colour = ops.locator(".badge.status-succeeded").evaluate(
        "el => getComputedStyle(el).backgroundColor"
    )
    assert colour == "rgb(220, 252, 231)"
    shot(page, "02-repositories")


def test_failed_revision_shows_errors_grouped_by_file_and_service(
    page: Page, live_server: LiveServer, history: dict[str, Revision]
) -> None:
    failed = history["failed"]
    log_in(page, live_server)
    page.get_by_role("link", name="ops-config").click()
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()
    expect(page.get_by_text("FIREWORK_OPS_TOKEN")).to_be_visible()
    shot(page, "03-repository")
    page.get_by_role("link", name=f"#{failed.pk}", exact=True).click()

    expect(page).to_have_url(f"{live_server.url}/revisions/{failed.pk}/")
    expect(page.locator("h1")).to_contain_text(f"Run #{failed.pk} of ops-config")
    expect(page.get_by_role("alert")).to_contain_text("refusing to publish")
    errors = page.locator("section.problems.errors")
    files = errors.locator(".problem-file h3 code")
    expect(files).to_have_text(
        ["defaults.yaml", "services/api.yaml", "services/web.yaml"]
    )
    web = errors.locator(".problem-file").filter(has_text="services/web.yaml")
    expect(web.locator("h4")).to_have_text(["service cache", "service web"])
    expect(web.locator(".problem-service").nth(1).locator("li")).to_have_text(
        ["missing image", "memory_mb: too big"]
    )
    expect(page.locator("section.problems.warnings")).to_contain_text(
        "unknown field colour"
    )
    shot(page, "04-failed-revision")


def test_succeeded_revision_shows_the_published_yaml_and_its_diff(
    page: Page, live_server: LiveServer, history: dict[str, Revision]
) -> None:
    fixed, first = history["fixed"], history["first"]
    log_in(page, live_server, next_path="/revisions/")
    expect(page).to_have_url(f"{live_server.url}/revisions/")
    shot(page, "05-revisions")
    page.get_by_role("link", name=f"#{fixed.pk}", exact=True).click()

    expect(page.locator(".badge.status-succeeded")).to_be_visible()
    expect(
        page.get_by_text("Compared with the previous succeeded run")
    ).to_contain_text(f"#{first.pk}")
    general = page.locator("#node-general-purpose")
    expect(general.locator(".badge.change")).to_have_text("changed")
    expect(general.locator(".line.removed")).to_have_text(["-    memory_mb: 512"])
    expect(general.locator(".line.added")).to_have_text(["+    memory_mb: 1024"])
    added_bg = general.locator(".line.added").evaluate(
        "el => getComputedStyle(el).backgroundColor"
    )
    removed_bg = general.locator(".line.removed").evaluate(
        "el => getComputedStyle(el).backgroundColor"
    )
    assert added_bg != removed_bg
    expect(page.locator("#node-edge .badge.change")).to_have_text("new node type")
    expect(page.locator("#node-compute .badge.change")).to_have_text(
        "removed node type"
    )
    yaml = general.locator("pre.yaml")
    expect(yaml).to_be_hidden()
    general.get_by_text("YAML published for").click()
    expect(yaml).to_be_visible()
    expect(yaml).to_contain_text("memory_mb: 1024")
    shot(page, "06-succeeded-revision")


def test_node_types_page_shows_services_and_the_publishing_run(
    page: Page,
    live_server: LiveServer,
    history: dict[str, Revision],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The live server runs in this process, so it reads this environment.
    monkeypatch.setenv("FIREWORK_STORE", "local")
    monkeypatch.setenv("FIREWORK_STORE_DIR", str(tmp_path / "store"))
    store = LocalStore(tmp_path / "store")
    store.put("nodes/edge.yaml", EDGE.encode())  # as the last run published it
    store.put("nodes/general-purpose.yaml", WIRED.encode())  # by hand
    log_in(page, live_server)
    page.get_by_role("link", name="Node types").click()

    expect(page.get_by_role("heading", name="Node types", exact=True)).to_be_visible()
    edge = page.locator("#node-edge")
    expect(edge.get_by_role("link", name=f"run #{history['fixed'].pk}")).to_be_visible()
    general = page.locator("#node-general-purpose")
    expect(general).to_contain_text("no recorded run")
    web = general.get_by_role("row").filter(has_text="fw-web")
    expect(web.get_by_role("rowheader")).to_have_text("web")
    expect(web).to_contain_text("http :80/healthz every 10s")
    expect(web).to_contain_text("API_URL → http://api:9000")
    expect(web).to_contain_text("8080 → 80")
    shot(page, "07-node-types")


def test_operator_queues_a_run_with_run_now(
    page: Page, live_server: LiveServer, history: dict[str, Revision]
) -> None:
    log_in(page, live_server)

    with tasks_queued_not_run():
        page.get_by_role("button", name="Run ops-config now").click()
        expect(page.get_by_role("status")).to_contain_text("queued")
        run = Revision.objects.get(trigger=Revision.Trigger.MANUAL)
        assert queued_tasks() == [("controlplane.tasks.run_revision", [run.pk])]

    expect(page).to_have_url(f"{live_server.url}/revisions/{run.pk}/")
    expect(page.get_by_role("status")).to_have_text(
        f"Run #{run.pk} of ops-config queued."
    )
    expect(page.locator(".heading .badge")).to_have_text("queued")
    assert run.requested_by is not None
    assert run.requested_by.username == "alice"
    shot(page, "08-run-queued")
    # The worker takes the run and ends it: the page follows without a reload,
    # then stops asking.
    page.evaluate("window.sameDocument = true")
    Revision.objects.filter(pk=run.pk).update(
        status=Revision.Status.RUNNING, started_at=timezone.now()
    )
    expect(page.locator(".heading .badge")).to_have_text("running")
    Revision.objects.filter(pk=run.pk).update(
        status=Revision.Status.SUCCEEDED, finished_at=timezone.now(), published=True
    )
    # (the node types it no longer publishes have badges of their own)
    expect(page.locator(".heading .badge").first).to_have_text("succeeded")
    expect(page.locator("#live")).to_have_attribute("data-refresh-stopped", "done")
    assert page.evaluate("window.sameDocument") is True
    shot(page, "09-run-finished")
