"""``manage.py create_api_token``: tokens for automation that work against the API."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import CommandError, call_command
from rest_framework.authtoken.models import Token

from controlplane.api.permissions import OPERATORS_GROUP
from tests.apisupport import token_client

pytestmark = pytest.mark.django_db

REPOSITORIES = "/api/v1/repositories/"


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("create_api_token", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def new_repository() -> dict[str, str]:
    return {"name": "ops", "clone_url": "https://github.com/example/ops.git"}


def test_prints_only_the_token_and_it_reads_the_api():
    User.objects.create_user("ci")

    out, err = run("ci")

    key = out.strip()
    assert out == f"{key}\n"
    assert Token.objects.get(user__username="ci").key == key
    assert "created API token of ci (read-only)" in err
    assert key not in err
    client = token_client(key)
    assert client.get(REPOSITORIES).status_code == 200
    assert client.post(REPOSITORIES, new_repository()).status_code == 403


def test_second_run_shows_the_same_token():
    User.objects.create_user("ci")
    first, _ = run("ci")

    second, err = run("ci")

    assert second == first
    assert "existing API token of ci" in err
    assert Token.objects.count() == 1


def test_rotate_replaces_the_token_and_the_old_one_stops_working():
    User.objects.create_user("ci")
    old, _ = run("ci")

    new, err = run("ci", "--rotate")

    assert new.strip() != old.strip()
    assert "created API token" in err
    assert token_client(old.strip()).get(REPOSITORIES).status_code == 401
    assert token_client(new.strip()).get(REPOSITORIES).status_code == 200


def test_unknown_user_is_refused_without_create_user():
    with pytest.raises(CommandError, match="no user deploy; pass --create-user"):
        run("deploy")

    assert not User.objects.exists()
    assert not Token.objects.exists()


def test_create_user_and_operator_make_a_writing_automation_account():
    out, err = run("deploy", "--create-user", "--operator")

    user = User.objects.get(username="deploy")
    assert not user.has_usable_password()
    assert list(user.groups.values_list("name", flat=True)) == [OPERATORS_GROUP]
    assert "created user deploy (no password: API only)" in err
    assert "(operator)" in err
    response = token_client(out.strip()).post(
        REPOSITORIES, new_repository(), format="json"
    )
    assert response.status_code == 201


def test_operator_flag_creates_the_group_once():
    User.objects.create_user("a")
    User.objects.create_user("b")

    run("a", "--operator")
    run("b", "--operator")

    assert Group.objects.filter(name=OPERATORS_GROUP).count() == 1
    assert Group.objects.get(name=OPERATORS_GROUP).user_set.count() == 2


def test_deactivated_user_gets_no_token():
    User.objects.create_user("gone", is_active=False)

    with pytest.raises(CommandError, match="deactivated"):
        run("gone")

    assert not Token.objects.exists()
