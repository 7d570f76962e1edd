"""Who may do what in the REST API.

Every endpoint needs an authenticated, active user (an API token or a browser
session). Reading is open to any such user. Writing (creating, changing or
deleting a repository, triggering or re-running an enrichment) needs an
**operator**: an active user who is a superuser, is staff (``is_staff``, may log in
to the Django admin), or belongs to the group named :data:`OPERATORS_GROUP`
(``operators``). The group needs no migration: ``manage.py create_api_token
--operator`` creates it on first use, and the admin can create it too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser, Group
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

if TYPE_CHECKING:
    # only for annotations: importing it here would be circular, since
    # rest_framework.views loads the authentication classes of the settings
    from rest_framework.views import APIView

OPERATORS_GROUP = "operators"


def is_operator(user: AbstractBaseUser | AnonymousUser) -> bool:
    """True if ``user`` may change repositories and trigger runs."""
    if not user.is_authenticated or not user.is_active:
        return False
    if getattr(user, "is_superuser", False) or getattr(user, "is_staff", False):
        return True
    groups: Any = getattr(user, "groups", None)
    return groups is not None and bool(groups.filter(name=OPERATORS_GROUP).exists())


def operators_group() -> Group:
    """The operators group, created the first time it is needed."""
    group, _created = Group.objects.get_or_create(name=OPERATORS_GROUP)
    return group


class IsOperatorOrReadOnly(BasePermission):
    """Reading for any authenticated user; every other method for operators."""

    message = (
        "this action needs an operator: a staff user or a member of the "
        f"{OPERATORS_GROUP} group"
    )

    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        if user is None or not user.is_authenticated:
            return False
        return request.method in SAFE_METHODS or is_operator(user)
