"""Fuzzing the GitHub webhook: no payload or header ever makes it fail (5xx).

Most bodies are signed with the repository's secret, so they get past the
signature check and reach the parser and the branch and delivery checks; the
payload strategy stays close to a push so that every outcome, queued included,
is reached. The test client raises any exception the view lets escape.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlencode

import pytest
from django.test import Client
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from controlplane.models import ConfigRepository
from tests.test_webhook import CLONE_URL, SECRET, SHA, URL, sign

ZERO_SHA = "0" * 40
# Every code point, lone surrogates included: JSON can carry them as escapes.
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=24)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4)
    ),
    max_leaves=12,
)
refs = st.sampled_from(
    ["refs/heads/main", "refs/heads/dev", "refs/tags/v1", "main", ""]
) | st.builds("refs/heads/{}".format, ANY_TEXT)
shas = st.sampled_from([SHA.upper(), ZERO_SHA]) | st.text(
    "0123456789abcdefABCDEFg", min_size=38, max_size=42
)
full_names = st.sampled_from(["ACME/OPS", "acme/other", ""]) | ANY_TEXT
MISSING = object()
VALID_PUSH: dict[str, Any] = {
    "ref": "refs/heads/main",
    "after": SHA,
    "repository": {"full_name": "acme/ops"},
    "deleted": False,
}
WRONG: dict[str, st.SearchStrategy[Any]] = {
    "ref": st.just(MISSING) | refs | json_values,
    "after": st.just(MISSING) | shas | json_values,
    "repository": st.just(MISSING)
    | st.just({"full_name": "acme/other"})
    | st.fixed_dictionaries({}, optional={"full_name": full_names | json_values})
    | json_values,
    "deleted": st.just(MISSING) | st.booleans() | json_values,
    "commits": json_values,
}


@st.composite
def push_like(draw: st.DrawFn) -> dict[str, Any]:
    """A valid push with a few of its fields removed or replaced."""
    payload = dict(VALID_PUSH)
    for key in sorted(draw(st.sets(st.sampled_from(sorted(WRONG))))):
        value = draw(WRONG[key])
        if value is MISSING:
            payload.pop(key, None)
        else:
            payload[key] = value
    return payload


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


bodies = st.one_of(
    push_like().map(_json),
    push_like().map(_json),
    push_like().map(lambda p: urlencode({"payload": json.dumps(p)}).encode()),
    st.tuples(push_like().map(_json), st.integers(0, 300)).map(lambda t: t[0][: t[1]]),
    json_values.map(_json),
    st.binary(max_size=512),
)
events = st.one_of(
    st.just("push"), st.just("push"), st.sampled_from(["ping", "issues", ""]), ANY_TEXT
)
delivery_ids = st.one_of(
    st.uuids().map(str), st.uuids().map(str), st.just("d-1"), st.text(max_size=120)
)
content_types = st.one_of(
    st.just("application/json"),
    st.sampled_from(["application/x-www-form-urlencoded", "text/plain", ""]),
    st.text(max_size=40),
)
remote_addrs = st.sampled_from(["127.0.0.1", "::1", "fe80::1%eth0", ""]) | ANY_TEXT


@pytest.fixture
def ops(db: None, monkeypatch: pytest.MonkeyPatch) -> ConfigRepository:
    monkeypatch.setenv("FIREWORK_TEST_OPS_SECRET", SECRET)
    return ConfigRepository.objects.create(
        name="ops",
        clone_url=CLONE_URL,
        github_full_name="acme/ops",
        webhook_secret_env="FIREWORK_TEST_OPS_SECRET",
    )


def _assert_answered(response: Any) -> None:
    assert response.status_code < 500, response.content
    answer = response.json()
    assert "error" in answer or "status" in answer
    # shown by --hypothesis-show-statistics: which outcomes the fuzz reached
    event(f"{response.status_code} {answer.get('status', 'error')}")


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    body=bodies,
    event=events,
    delivery=delivery_ids,
    content_type=content_types,
    remote_addr=remote_addrs,
)
def test_signed_payloads_never_cause_a_server_error(
    ops: ConfigRepository,
    body: bytes,
    event: str,
    delivery: str,
    content_type: str,
    remote_addr: str,
) -> None:
    def send() -> Any:
        return Client().generic(
            "POST",
            URL,
            body,
            content_type=content_type,
            HTTP_X_HUB_SIGNATURE_256=sign(body),
            HTTP_X_GITHUB_EVENT=event,
            HTTP_X_GITHUB_DELIVERY=delivery,
            REMOTE_ADDR=remote_addr,
        )

    response = send()
    _assert_answered(response)
    if response.json().get("status") == "queued":
        again = send()
        _assert_answered(again)
        assert again.json()["status"] == "duplicate"


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    body=st.binary(max_size=256),
    headers=st.dictionaries(
        st.sampled_from(
            [
                "HTTP_X_HUB_SIGNATURE_256",
                "HTTP_X_GITHUB_EVENT",
                "HTTP_X_GITHUB_DELIVERY",
                "HTTP_TRANSFER_ENCODING",
                "CONTENT_LENGTH",
                "CONTENT_TYPE",
            ]
        ),
        ANY_TEXT,
    ),
    method=st.sampled_from(["POST", "POST", "GET", "PUT", "HEAD", "OPTIONS"]),
)
def test_random_bytes_and_headers_never_cause_a_server_error(
    ops: ConfigRepository, body: bytes, headers: dict[str, Any], method: str
) -> None:
    length = headers.get("CONTENT_LENGTH", "").strip()
    if re.fullmatch("[0-9]+", length) and int(length) > len(body):
        # The test client's stream fails on reads past its end; a real server
        # returns a short read, which the signature check then refuses.
        headers["CONTENT_LENGTH"] = str(len(body))
    response = Client().generic(method, URL, body, **headers)
    assert response.status_code < 500, response.content
    if method != "HEAD":
        _assert_answered(response)
