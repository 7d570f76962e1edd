"""The node pages in a real browser, including how they follow new reports.

Same set-up as ``tests/test_browser.py``: pytest-django's live server on
127.0.0.1 for this module, Debian's ``/usr/bin/chromium`` driven by Playwright,
screenshots under ``artifacts/screenshots/hosts-*.png``.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from playwright.sync_api import Locator, Page, expect
from pytest_django.live_server_helper import LiveServer

from controlplane.models import Node, NodeTransition
from controlplane.nodereports import ingest
from tests.browsersupport import SCREENSHOTS
from tests.dashboard_data import GENERAL_V1, PASSWORD, SHA_A, SHA_C, WIRED, make_user
from tests.test_dashboard_hosts import (
    agent_report,
    make_fleet,
    publish,
    service_report,
    sha256,
)

GREEN = "rgb(220, 252, 231)"  # --ok-bg
# One refresh every 5 s; a change must show within two of them.
REFRESH_TIMEOUT_MS = 12_000

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Node]:
    publish(tmp_path / "store", monkeypatch)
    return make_fleet()


def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"hosts-{name}.png"), full_page=True)


def log_in(page: Page, live_server: LiveServer, next_path: str) -> None:
    """Bob, who is no operator, logs in and lands on ``next_path``."""
    make_user("bob")
    page.goto(f"{live_server.url}{next_path}")
    page.get_by_label("Username").fill("bob")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{live_server.url}{next_path}")


def background(locator: Locator) -> str:
    colour: str = locator.evaluate("el => getComputedStyle(el).backgroundColor")
    return colour


def test_node_list_shows_state_revisions_and_counts(
    page: Page, live_server: LiveServer, fleet: dict[str, Node]
) -> None:
    log_in(page, live_server, "/")
    page.get_by_role("link", name="Nodes", exact=True).click()

    expect(page.get_by_role("heading", name="Nodes", exact=True)).to_be_visible()
    rows = page.locator("table.hosts tbody tr")
    expect(rows).to_have_count(4)
    alpha = rows.filter(has_text="alpha")
    expect(alpha.locator(".badge")).to_have_text("converged")
    assert background(alpha.locator(".badge")) == GREEN
    expect(alpha.locator(".revision .commit")).to_have_text(SHA_C[:12])
    bravo = rows.filter(has_text="bravo")
    expect(bravo.locator(".badge")).to_have_text("drifted")
    mismatch = bravo.locator(".revision.mismatch")
    expect(mismatch.locator(".applied")).to_have_text(sha256(GENERAL_V1)[:12])
    expect(mismatch).to_contain_text(SHA_A[:12])  # the commit it still runs
    assert background(mismatch.locator(".applied")) != background(
        alpha.locator(".revision .applied")
    )
    expect(bravo.locator("td.num")).to_have_text(["0", "0", "1", "1"])
    for stale in ("charlie", "delta"):
        badge = rows.filter(has_text=stale).locator(".badge")
        expect(badge).to_have_text("stale" if stale == "charlie" else "unknown")
        assert background(badge) != GREEN
    last_seen = rows.filter(has_text="charlie").locator("time")
    expect(last_seen).to_have_text("10\u00a0minutes ago")
    expect(last_seen).to_have_attribute("title", re.compile(r"^\d{4}-\d\d-\d\d "))
    shot(page, "01-list")


def test_node_detail_shows_desired_next_to_actual(
    page: Page, live_server: LiveServer, fleet: dict[str, Node]
) -> None:
    changes = [("state", "running", "failed"), ("state", "failed", "crashloop")]
    for minutes, (field, old, new) in enumerate(changes):
        NodeTransition.objects.create(
            node=fleet["bravo"],
            service="web",
            field=field,
            old_value=old,
            new_value=new,
            at=timezone.now() - timedelta(minutes=5 - minutes),
        )
    log_in(page, live_server, "/hosts/")
    page.get_by_role("link", name="bravo", exact=True).click()

    expect(page).to_have_url(f"{live_server.url}/hosts/bravo/")
    expect(page.locator(".host-summary .badge")).to_have_text("drifted")
    expect(page.locator(".reasons")).to_contain_text("runs revision")
    web = page.locator("tr[data-service=web]")
    expect(web.locator(".badge")).to_have_text("failed")
    expect(web.locator("td.desired")).to_contain_text("/var/lib/images/web-rootfs")
    expect(web.locator("td.desired")).to_contain_text("8080 → 80")
    expect(web.locator("td.actual")).to_contain_text("crashloop")
    expect(web.locator("td.actual")).to_contain_text("vm exited with status 1")
    api = page.locator("tr[data-service=api]")
    expect(api.locator(".badge")).to_have_text("missing")
    expect(api.locator("td.actual")).to_have_text("not reported by the agent")
    newest = page.locator("table.transitions tbody tr").first
    expect(newest).to_contain_text("crashloop")
    shot(page, "02-detail")


def test_services_view_says_which_commit_runs_where(
    page: Page, live_server: LiveServer, fleet: dict[str, Node]
) -> None:
    log_in(page, live_server, "/")
    page.get_by_role("link", name="Services", exact=True).click()

    expect(page.get_by_role("heading", name="Services", exact=True)).to_be_visible()
    web = page.locator("tr[data-service=web]")
    expect(web).to_have_count(4)
    expect(web.filter(has_text="alpha").locator(".commit")).to_have_text(SHA_C[:12])
    expect(web.filter(has_text="bravo").locator(".revision.mismatch")).to_be_visible()
    shot(page, "03-services")


def test_node_page_follows_new_reports_without_reloading(
    page: Page, live_server: LiveServer, fleet: dict[str, Node]
) -> None:
    log_in(page, live_server, "/hosts/alpha/")
    expect(page.locator(".host-summary .badge")).to_have_text("converged")
    page.evaluate("window.notReloaded = true")

    # The agent's next report: web's health check now fails.
    web = service_report("web")
    web["health"] |= {"status": "unhealthy", "failures": 3, "last_error": "timeout"}
    report = agent_report(sha256(WIRED), [web, service_report("api")])
    ingest(fleet["alpha"], report, timezone.now())  # as the report endpoint does

    badge = page.locator(".host-summary .badge")
    expect(badge).to_have_text("drifted", timeout=REFRESH_TIMEOUT_MS)
    row = page.locator("tr[data-service=web]")
    expect(row.locator(".badge")).to_have_text("unhealthy")
    expect(row.locator("td.actual")).to_contain_text("timeout")
    change = page.locator("table.transitions tbody tr").first
    expect(change.locator("td")).to_have_text(
        [re.compile("ago|just now"), "web", "health", "healthy", "unhealthy"]
    )
    assert page.evaluate("window.notReloaded") is True
    navigations = page.evaluate("performance.getEntriesByType('navigation').length")
    assert navigations == 1
    shot(page, "04-refreshed")


def test_refresh_pauses_while_the_tab_is_hidden(
    page: Page, live_server: LiveServer, fleet: dict[str, Node]
) -> None:
    log_in(page, live_server, "/hosts/")
    fetched: list[str] = []
    page.on("request", lambda request: fetched.append(request.url))
    page.evaluate(
        """() => {
          Object.defineProperty(document, "hidden", {value: true, configurable: true});
          document.dispatchEvent(new Event("visibilitychange"));
        }"""
    )
    page.wait_for_timeout(6_000)
    assert not [url for url in fetched if "fragment=1" in url]

    page.evaluate(
        """() => {
          Object.defineProperty(document, "hidden", {value: false, configurable: true});
          document.dispatchEvent(new Event("visibilitychange"));
        }"""
    )
    expect(page.locator("#live")).to_have_attribute(
        "data-refreshed-at", re.compile("."), timeout=REFRESH_TIMEOUT_MS
    )
    assert [url for url in fetched if "fragment=1" in url]
