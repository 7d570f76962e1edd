"""``POST /webhooks/github/``: signature, size cap, event, payload, branch, dedup.

Requests go through Django's whole stack with the test client. Inside the test's
transaction no commit happens, so no run is started; where the run's scheduling
itself is checked, the commit hooks are captured.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import pytest
from django.test import Client
from django.urls import reverse
from pytest_django import DjangoCaptureOnCommitCallbacks

from controlplane.models import ConfigRepository, Revision, WebhookDelivery
from tests.celerysupport import celery_enqueues_only

if TYPE_CHECKING:
    from django.test.client import _MonkeyPatchedWSGIResponse as Response

SECRET = "alice-webhook-secret-7f3a"
BOB_SECRET = "bob-webhook-secret-91c2"
SHA = "3f786850e387550fdab836ed7e6dc881de23001b"
ZERO_SHA = "0" * 40
URL = "/webhooks/github/"
# Runs never start in these tests; were one to, it would only reach loopback.
CLONE_URL = "http://127.0.0.1:9/acme/ops.git"


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def push_payload(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "ref": "refs/heads/main",
        "before": "a" * 40,
        "after": SHA,
        "deleted": False,
        "repository": {"full_name": "acme/ops", "clone_url": "https://x/acme/ops"},
        "pusher": {"name": "alice"},
    }
    payload.update(changes)
    return payload


def post(
    client: Client,
    body: bytes | dict[str, Any],
    *,
    event: str | None = "push",
    delivery: str | None = None,
    secret: str = SECRET,
    signature: str | None = None,
    content_type: str = "application/json",
    **extra: str,
) -> Response:
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    headers: dict[str, Any] = {}
    if event is not None:
        headers["HTTP_X_GITHUB_EVENT"] = event
    headers["HTTP_X_GITHUB_DELIVERY"] = delivery or str(uuid.uuid4())
    headers["HTTP_X_HUB_SIGNATURE_256"] = signature or sign(raw, secret)
    if signature == "":
        del headers["HTTP_X_HUB_SIGNATURE_256"]
    headers.update(extra)
    return client.generic("POST", URL, raw, content_type=content_type, **headers)


@pytest.fixture
def ops(db: None, monkeypatch: pytest.MonkeyPatch) -> ConfigRepository:
    monkeypatch.setenv("FIREWORK_TEST_OPS_SECRET", SECRET)
    return ConfigRepository.objects.create(
        name="ops",
        clone_url=CLONE_URL,
        github_full_name="acme/ops",
        branch="main",
        webhook_secret_env="FIREWORK_TEST_OPS_SECRET",
    )


def last_delivery() -> WebhookDelivery:
    return WebhookDelivery.objects.latest("id")


def assert_error(response: Response, status: int, text: str) -> None:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    assert text in response.json()["error"]
    assert not Revision.objects.exists()


# Signature


def test_unsigned_request_is_refused_and_recorded(ops: ConfigRepository) -> None:
    response = post(Client(), push_payload(), signature="")
    assert_error(response, 401, "missing X-Hub-Signature-256")
    delivery = last_delivery()
    assert (delivery.status_code, delivery.accepted) == (401, False)


@pytest.mark.parametrize(
    "header",
    [
        "sha1=" + "a" * 40,
        "sha256=" + "z" * 64,
        "sha256=" + "a" * 63,
        "sha256 " + "a" * 64,
        "a" * 64,
    ],
)
def test_malformed_signature_header_is_refused(
    ops: ConfigRepository, header: str
) -> None:
    response = post(Client(), push_payload(), signature=header)
    assert_error(response, 401, "sha256=<64 hex digits>")


@pytest.mark.parametrize(
    ("body", "signed", "secret"),
    [
        (push_payload(), push_payload(after="b" * 40), SECRET),
        (push_payload(), push_payload(), BOB_SECRET),
        (b"{not json", b"{not json", BOB_SECRET),  # refused before parsing
    ],
    ids=["other-body", "other-secret", "unparsed"],
)
def test_wrong_signature_is_refused(
    ops: ConfigRepository, body: Any, signed: Any, secret: str
) -> None:
    raw = signed if isinstance(signed, bytes) else json.dumps(signed).encode()
    response = post(Client(), body, signature=sign(raw, secret))
    assert_error(response, 401, "does not match")


@pytest.mark.parametrize("secret_env", ["", "FIREWORK_TEST_UNSET_SECRET"])
def test_repository_without_webhook_secret_never_accepts(
    db: None, secret_env: str
) -> None:
    ConfigRepository.objects.create(
        name="ops",
        clone_url=CLONE_URL,
        github_full_name="acme/ops",
        webhook_secret_env=secret_env,
    )
    for secret in ("", "anything"):
        response = post(Client(), push_payload(), secret=secret)
        assert_error(response, 401, "does not match")


def test_a_misconfigured_secret_is_skipped_and_others_still_work(
    ops: ConfigRepository, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    monkeypatch.setenv("FIREWORK_TEST_BROKEN", "x")
    monkeypatch.setenv("FIREWORK_TEST_BROKEN_FILE", "/nonexistent")
    ConfigRepository.objects.create(
        name="broken", clone_url="x", webhook_secret_env="FIREWORK_TEST_BROKEN"
    )
    with caplog.at_level(logging.WARNING, logger="controlplane.webhook"):
        assert post(Client(), push_payload()).status_code == 202
    assert "webhook secret unusable repository=broken" in caplog.text


# Events


def test_ping_answers_pong(ops: ConfigRepository) -> None:
    response = post(Client(), {"zen": "Keep it logically awesome."}, event="ping")
    assert (response.status_code, response.json()) == (200, {"status": "pong"})
    delivery = last_delivery()
    assert (delivery.event, delivery.repository) == ("ping", ops)


def test_events_other_than_push_are_ignored(ops: ConfigRepository) -> None:
    response = post(Client(), {"action": "opened"}, event="issues")
    reason = "event issues is not handled"
    assert response.json() == {"status": "ignored", "reason": reason}
    assert response.status_code == 202
    assert not Revision.objects.exists()


def test_missing_event_header_is_refused(ops: ConfigRepository) -> None:
    assert_error(post(Client(), push_payload(), event=None), 400, "X-GitHub-Event")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_methods_other_than_post_are_refused(
    ops: ConfigRepository, method: str
) -> None:
    response = Client().generic(method, URL)
    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert "POST" in response.json()["error"]
    assert last_delivery().status_code == 405


# Payload


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "malformed JSON: Expecting property name"),
        (json.dumps(push_payload()).encode()[:-7], "malformed JSON"),
        (b"", "malformed JSON: Expecting value at line 1 column 1"),
        (b"\xff\xfe\xfa", "malformed JSON"),
        (b"[" * 100_000, "malformed JSON"),
        (b"[]", "payload must be a JSON object"),
        (b'"refs/heads/main"', "payload must be a JSON object"),
        (b"null", "payload must be a JSON object"),
    ],
    ids=["garbage", "truncated", "empty", "not-utf8", "deep", "list", "str", "null"],
)
def test_malformed_payload_is_refused(
    ops: ConfigRepository, body: bytes, message: str
) -> None:
    assert_error(post(Client(), body), 400, message)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ref": None}, "field ref: must be a string"),
        ({"ref": 1}, "field ref: must be a string"),
        ({"ref": ""}, "field ref: must not be empty"),
        ({"after": ["x"]}, "field after: must be a string"),
        ({"after": "abc"}, "field after: must be a 40-character hex commit SHA"),
        ({"after": SHA + "0"}, "field after: must be a 40-character hex commit SHA"),
        ({"repository": None}, "field repository: missing"),
        ({"repository": "acme/ops"}, "field repository: must be an object"),
        ({"repository": {}}, "field repository.full_name: missing"),
        ({"repository": {"full_name": 7}}, "field repository.full_name: must be a"),
    ],
)
def test_fields_of_the_wrong_type_are_refused_naming_the_field(
    ops: ConfigRepository, changes: dict[str, Any], message: str
) -> None:
    assert_error(post(Client(), push_payload(**changes)), 400, message)


@pytest.mark.parametrize("field", ["ref", "after", "repository"])
def test_missing_fields_are_refused_naming_the_field(
    ops: ConfigRepository, field: str
) -> None:
    payload = push_payload()
    del payload[field]
    assert_error(post(Client(), payload), 400, f"field {field}: missing")


@pytest.mark.parametrize(
    ("delivery", "message"),
    [("", "missing X-GitHub-Delivery"), ("x" * 101, "X-GitHub-Delivery must be")],
)
def test_push_without_a_usable_delivery_id_is_refused(
    ops: ConfigRepository, delivery: str, message: str
) -> None:
    response = post(Client(), push_payload(), HTTP_X_GITHUB_DELIVERY=delivery)
    assert_error(response, 400, message)


# Repository and branch


def test_unknown_repository_is_refused(ops: ConfigRepository) -> None:
    payload = push_payload(repository={"full_name": "mallory/ops"})
    response = post(Client(), payload)
    assert_error(response, 404, "repository mallory/ops is not configured")
    assert last_delivery().repository == ops


def test_repository_name_is_matched_regardless_of_case(ops: ConfigRepository) -> None:
    payload = push_payload(repository={"full_name": "ACME/Ops"})
    assert post(Client(), payload).status_code == 202


def test_repository_signed_by_its_own_secret_only(
    ops: ConfigRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    # bob's secret must not let a payload naming alice's repository through
    monkeypatch.setenv("FIREWORK_TEST_BOB_SECRET", BOB_SECRET)
    ConfigRepository.objects.create(
        name="bob",
        clone_url=CLONE_URL,
        github_full_name="bob/cfg",
        webhook_secret_env="FIREWORK_TEST_BOB_SECRET",
    )
    response = post(Client(), push_payload(), secret=BOB_SECRET)
    assert_error(response, 404, "repository acme/ops is not configured")


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ("refs/heads/feature/x", "refs/heads/feature/x is not a tracked branch"),
        ("refs/heads/mainline", "refs/heads/mainline is not a tracked branch"),
        ("refs/tags/main", "refs/tags/main is not a tracked branch"),
        ("refs/tags/v1.2.0", "refs/tags/v1.2.0 is not a tracked branch"),
        ("main", "main is not a tracked branch"),
    ],
)
def test_other_branches_and_tags_are_ignored(
    ops: ConfigRepository, ref: str, reason: str
) -> None:
    response = post(Client(), push_payload(ref=ref))
    assert response.status_code == 202
    assert response.json() == {"status": "ignored", "reason": reason}
    assert not Revision.objects.exists()
    assert last_delivery().outcome == f"ignored: {reason}"


def test_branch_deletion_is_ignored(ops: ConfigRepository) -> None:
    response = post(Client(), push_payload(after=ZERO_SHA, deleted=True))
    assert response.status_code == 202
    assert response.json()["reason"] == "refs/heads/main was deleted"
    assert not Revision.objects.exists()


def test_inactive_repository_is_ignored(ops: ConfigRepository) -> None:
    ops.active = False
    ops.save()
    response = post(Client(), push_payload())
    assert response.status_code == 202
    assert response.json()["reason"] == "repository ops is inactive"
    assert not Revision.objects.exists()


def test_one_github_repository_per_branch_runs_only_the_pushed_branch(
    ops: ConfigRepository,
) -> None:
    staging = ConfigRepository.objects.create(
        name="ops-staging",
        clone_url=ops.clone_url,
        github_full_name="acme/ops",
        branch="staging",
        webhook_secret_env=ops.webhook_secret_env,
    )
    response = post(Client(), push_payload(ref="refs/heads/staging"))
    assert response.status_code == 202
    revision = Revision.objects.get()
    assert (revision.repository, revision.ref) == (staging, "staging")


# Accepted pushes


def test_valid_push_queues_a_revision(ops: ConfigRepository) -> None:
    assert reverse("github-webhook") == URL
    response = post(Client(), push_payload(), delivery="d-0001")
    assert response.status_code == 202, response.content
    revision = Revision.objects.get()
    pk = revision.pk
    assert response.json() == {"status": "queued", "revision": pk, "revisions": [pk]}
    assert (revision.repository, revision.ref, revision.commit_sha) == (
        ops,
        "main",
        SHA,
    )
    assert (revision.trigger, revision.status, revision.delivery_id) == (
        "webhook",
        "queued",
        "d-0001",
    )
    delivery = last_delivery()
    assert delivery.accepted and delivery.revision == revision
    assert (delivery.event, delivery.delivery_id, delivery.remote_addr) == (
        "push",
        "d-0001",
        "127.0.0.1",
    )
    assert delivery.body_bytes == len(json.dumps(push_payload()))


def test_valid_push_hands_the_run_to_celery_and_answers_without_running_it(
    ops: ConfigRepository,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    with celery_enqueues_only() as queue:
        with django_capture_on_commit_callbacks(execute=True):
            response = post(Client(), push_payload())
        queued = [(task.name, task.args) for task in queue.drain()]
    revision = Revision.objects.get()
    assert response.json()["revision"] == revision.pk
    assert queued == [("controlplane.tasks.run_revision", [revision.pk])]
    revision.refresh_from_db()
    assert revision.status == Revision.Status.QUEUED


def test_form_encoded_push_is_queued(ops: ConfigRepository) -> None:
    body = urlencode({"payload": json.dumps(push_payload())}).encode()
    response = post(Client(), body, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 202
    assert Revision.objects.get().commit_sha == SHA


def test_form_body_without_payload_field_is_refused(ops: ConfigRepository) -> None:
    body = urlencode({"other": "{}"}).encode()
    response = post(Client(), body, content_type="application/x-www-form-urlencoded")
    assert_error(response, 400, "form field payload: missing")


def test_uppercase_commit_sha_is_stored_lowercase(ops: ConfigRepository) -> None:
    post(Client(), push_payload(after=SHA.upper()))
    assert Revision.objects.get().commit_sha == SHA


def test_duplicate_delivery_is_not_queued_again(ops: ConfigRepository) -> None:
    first = post(Client(), push_payload(), delivery="d-dup")
    second = post(Client(), push_payload(), delivery="d-dup")
    revision = Revision.objects.get()
    assert first.json()["revision"] == revision.pk
    assert second.status_code == 200
    assert second.json() == {"status": "duplicate", "revision": revision.pk}
    assert WebhookDelivery.objects.filter(delivery_id="d-dup").count() == 2
    assert WebhookDelivery.objects.filter(accepted=True).count() == 1


def test_ignored_delivery_is_queued_when_redelivered_after_activation(
    ops: ConfigRepository,
) -> None:
    ops.active = False
    ops.save()
    assert post(Client(), push_payload(), delivery="d-again").status_code == 202
    assert not Revision.objects.exists()
    ops.active = True
    ops.save()
    response = post(Client(), push_payload(), delivery="d-again")
    assert response.json()["status"] == "queued"
    assert Revision.objects.get().delivery_id == "d-again"


def test_secret_signature_and_body_are_never_logged_or_answered(
    ops: ConfigRepository, caplog: Any
) -> None:
    marker = "body-marker-5d1e"
    payload = push_payload(head_commit={"message": marker})
    raw = json.dumps(payload).encode()
    bad = sign(raw, BOB_SECRET)
    with caplog.at_level(logging.DEBUG):
        answers = [
            post(Client(), raw),
            post(Client(), raw, signature=bad),
            post(Client(), push_payload(ref=1, x=marker)),
        ]
    shown = caplog.text + "".join(a.content.decode() for a in answers)
    shown += json.dumps(list(WebhookDelivery.objects.values()), default=str)
    assert "webhook event=push" in caplog.text
    for secret in (SECRET, BOB_SECRET, sign(raw)[7:], bad[7:], marker):
        assert secret not in shown


def test_control_characters_from_the_payload_stay_out_of_the_record(
    ops: ConfigRepository,
) -> None:
    response = post(Client(), push_payload(ref="refs/heads/x\n\x00evil\ud800"))
    assert response.status_code == 202
    assert (
        last_delivery().outcome
        == "ignored: refs/heads/x??evil? is not a tracked branch"
    )
