"""Personas, clients and the task queue shared by the REST API tests.

alice is an operator (member of the ``operators`` group), bob a read-only user,
both with API tokens; charlie is anonymous. Clients talk to the real views and
the real database through DRF's ``APIClient``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.middleware.csrf import get_token
from django.test import RequestFactory
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from controlplane.api.permissions import operators_group
from controlplane.models import ConfigRepository


@dataclass
class Personas:
    """The users of the API tests and their tokens."""

    alice: User
    bob: User
    alice_token: str
    bob_token: str


def make_personas() -> Personas:
    """alice the operator and bob the read-only user, each with a token."""
    alice = User.objects.create_user("alice")  # no password: nothing to hash
    alice.groups.add(operators_group())
    bob = User.objects.create_user("bob")
    return Personas(
        alice=alice,
        bob=bob,
        alice_token=Token.objects.create(user=alice).key,
        bob_token=Token.objects.create(user=bob).key,
    )


def token_client(key: str) -> APIClient:
    """A client sending ``Authorization: Token <key>``, as automation does."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def session_client(user: User, *, with_csrf: bool) -> APIClient:
    """A logged-in browser session; CSRF is checked as in production.

    With ``with_csrf`` every request carries the CSRF cookie and the matching
    ``X-CSRFToken`` header a page of the site would send.
    """
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    if with_csrf:
        request = RequestFactory().get("/")
        masked = get_token(request)
        client.cookies[settings.CSRF_COOKIE_NAME] = request.META["CSRF_COOKIE"]
        client.defaults["HTTP_X_CSRFTOKEN"] = masked
    return client


def make_repository(name: str = "ops", **fields: Any) -> ConfigRepository:
    """A config repository with plausible defaults."""
    values: dict[str, Any] = {
        "clone_url": f"https://github.com/example/{name}.git",
        "github_full_name": f"example/{name}",
        "branch": "main",
    }
    return ConfigRepository.objects.create(name=name, **(values | fields))


@dataclass(frozen=True)
class Endpoint:
    """One operation of the API for the auth matrix.

    ``path`` and ``body`` are built from the test's objects; ``ok`` is the status
    an operator gets.
    """

    name: str
    method: str
    path: Callable[[dict[str, Any]], str]
    ok: int
    body: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    @property
    def writes(self) -> bool:
        return self.method not in ("get", "head", "options")

    def call(self, client: APIClient, objects: dict[str, Any]) -> Any:
        """Send the request; bodies go as JSON."""
        send = getattr(client, self.method)
        if self.body is None:
            return send(self.path(objects))
        return send(self.path(objects), self.body(objects), format="json")
