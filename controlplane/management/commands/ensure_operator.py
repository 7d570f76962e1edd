"""``manage.py ensure_operator``: make sure the operator's superuser account exists.

Safe to run on every start: an existing account keeps its password unless
``FIREWORK_ADMIN_PASSWORD`` (or ``_FILE``) says otherwise.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from controlplane.envvars import EnvError, env_secret, env_str
from firework_site.secretfiles import write_private_file

if TYPE_CHECKING:
    from django.contrib.auth.models import User

# Where a generated password is kept for the operator to read back.
INITIAL_LOGIN_FILE = "admin-password"


class Command(BaseCommand):
    help = (
        "Create the operator superuser (FIREWORK_ADMIN_USER, default admin) or "
        "keep it; without FIREWORK_ADMIN_PASSWORD a new account gets a generated "
        f"password, printed once and saved to var/{INITIAL_LOGIN_FILE}."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        username = env_str("FIREWORK_ADMIN_USER", "admin")
        try:
            password = env_secret("FIREWORK_ADMIN_PASSWORD")
        except EnvError as exc:
            raise CommandError(str(exc)) from None
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            self._create(username, password)
        else:
            self._keep(user, password)

    def _create(self, username: str, password: str) -> None:
        users = get_user_model().objects
        if password:
            _check_password(password, users.model(username=username))
            users.create_superuser(username=username, email="", password=password)
            self.stdout.write(
                f"created operator {username} with the password from "
                "FIREWORK_ADMIN_PASSWORD"
            )
            return
        generated = secrets.token_urlsafe(18)
        path = settings.FIREWORK_VAR_DIR / INITIAL_LOGIN_FILE
        # One transaction: if the file cannot be written, no account is left
        # behind with a password nobody knows.
        try:
            with transaction.atomic():
                users.create_superuser(username=username, email="", password=generated)
                write_private_file(path, generated, replace=True)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise CommandError(
                f"cannot save the generated password to {path}: {reason}"
            ) from None
        self.stdout.write(
            f"created operator {username} with password {generated}\n"
            f"(saved to {path}, readable by its owner only)"
        )

    def _keep(self, user: User, password: str) -> None:
        username = user.get_username()
        changes = []
        if not (user.is_staff and user.is_superuser):
            user.is_staff = user.is_superuser = True
            changes.append("made superuser")
        if password and not user.check_password(password):
            _check_password(password, user)
            user.set_password(password)
            changes.append("password set from FIREWORK_ADMIN_PASSWORD")
        if changes:
            user.save()
        summary = ", ".join(changes) or "unchanged"
        self.stdout.write(f"operator {username} exists: {summary}")
        if not user.is_active:
            self.stderr.write(
                f"operator {username} is deactivated and cannot log in; "
                "reactivate it in the admin or with manage.py shell"
            )


def _check_password(password: str, user: User) -> None:
    """Apply AUTH_PASSWORD_VALIDATORS; the message never repeats the password."""
    try:
        validate_password(password, user)
    except ValidationError as exc:
        reasons = " ".join(exc.messages)
        raise CommandError(f"FIREWORK_ADMIN_PASSWORD: {reasons}") from None
