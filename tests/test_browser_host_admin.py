"""An operator registers a node and issues its enrollment token in a real browser.

Same set-up as ``tests/test_browser.py`` (its live server, Chromium and page
fixtures are imported here); the screenshots are
``artifacts/screenshots/hosts-05-enrollment.png`` and ``hosts-06-pending.png``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect
from pytest_django.live_server_helper import LiveServer

from controlplane.models import EnrollmentToken, Node
from tests.browsersupport import SCREENSHOTS
from tests.dashboard_data import PASSWORD, make_user

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def empty_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIREWORK_STORE", "local")
    monkeypatch.setenv("FIREWORK_STORE_DIR", str(tmp_path / "store"))
    (tmp_path / "store").mkdir()


def test_operator_registers_a_node_and_sees_its_token_once(
    page: Page,
    live_server: LiveServer,
    empty_store: None,
) -> None:
    make_user("alice", operator=True)
    page.goto(f"{live_server.url}/hosts/")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()

    page.get_by_label("Name").fill("Host_17")
    page.get_by_role("button", name="Register node").click()
    expect(page.locator(".field-error")).to_contain_text("a DNS label")
    page.get_by_label("Name").fill("host-17")
    page.get_by_label("Node types").fill("general-purpose, edge")
    page.get_by_role("button", name="Register node").click()

    expect(page).to_have_url(f"{live_server.url}/hosts/host-17/")
    expect(page.get_by_role("status").first).to_contain_text("Node host-17 registered.")
    assert Node.objects.get(name="host-17").labels == ["general-purpose", "edge"]

    page.get_by_role("button", name="Issue an enrollment token").click()
    expect(
        page.get_by_role("heading", name="Enrollment token for host-17")
    ).to_be_visible()
    token = page.get_by_label("Enrollment token").input_value()
    assert token.startswith("fwe_")
    expect(page.locator("#agent-config")).to_contain_text(
        f"control_plane_url: {live_server.url}"
    )
    expect(page.get_by_text("shown only once")).to_be_visible()
    assert EnrollmentToken.objects.filter(node__name="host-17").count() == 1
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "hosts-05-enrollment.png"), full_page=True)

    page.get_by_role("link", name="← Node host-17").click()
    expect(page).to_have_url(f"{live_server.url}/hosts/host-17/")
    assert token not in page.content()
    expect(page.locator(".enrollment-pending")).to_contain_text(
        "An unused enrollment token"
    )
    page.screenshot(path=str(SCREENSHOTS / "hosts-06-pending.png"), full_page=True)

    page.get_by_role("button", name="Cancel the unused enrollment token").click()
    expect(page.get_by_role("status").first).to_contain_text(
        "Cancelled the unused enrollment token of host-17."
    )
    expect(page.locator(".enrollment-pending")).to_have_count(0)
    assert not EnrollmentToken.objects.filter(
        node__name="host-17", expires_at__gt=timezone.now()
    ).exists()
