"""``manage.py create_api_token USER``: the REST API token of a user, for automation.

The token alone goes to stdout, so ``TOKEN=$(manage.py create_api_token ci)``
works; what happened goes to stderr. An existing token is shown again unless
``--rotate`` replaces it (the old one stops working at once).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from rest_framework.authtoken.models import Token

from controlplane.api.permissions import OPERATORS_GROUP, is_operator, operators_group

if TYPE_CHECKING:
    from django.contrib.auth.models import User


class Command(BaseCommand):
    help = (
        "Print the API token of USER, creating it if needed. --create-user makes "
        f"a user without a password; --operator adds the user to the "
        f"{OPERATORS_GROUP} group (write access); --rotate replaces the token."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument(
            "--create-user",
            action="store_true",
            help="create the user if missing (API access only: no password)",
        )
        parser.add_argument(
            "--operator",
            action="store_true",
            help=f"add the user to the {OPERATORS_GROUP} group",
        )
        parser.add_argument(
            "--rotate",
            action="store_true",
            help="delete the user's token and make a new one",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        with transaction.atomic():
            user = self._user(options["username"], options["create_user"])
            if options["operator"]:
                user.groups.add(operators_group())
            token, created = self._token(user, rotate=options["rotate"])
        role = "operator" if is_operator(user) else "read-only"
        what = "created" if created else "existing"
        self.stderr.write(f"{what} API token of {user.get_username()} ({role})")
        self.stdout.write(token.key)

    def _user(self, username: str, create: bool) -> User:
        users = get_user_model().objects
        user = users.filter(username=username).first()
        if user is None and not create:
            raise CommandError(f"no user {username}; pass --create-user to create one")
        if user is None:
            user = users.create_user(username=username)  # unusable password
            self.stderr.write(f"created user {username} (no password: API only)")
        if not user.is_active:
            raise CommandError(
                f"user {username} is deactivated; a token would not work"
            )
        return user

    def _token(self, user: User, *, rotate: bool) -> tuple[Token, bool]:
        if rotate:
            Token.objects.filter(user=user).delete()
        return Token.objects.get_or_create(user=user)
