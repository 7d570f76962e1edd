"""Who may do what in the dashboard.

Every page needs a login; changing anything (requesting a run) needs an operator,
by the same rule as the REST API's write actions (:func:`is_operator`: an active
superuser, staff user or member of the ``operators`` group).
"""

from __future__ import annotations

from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest

from controlplane.api.permissions import is_operator

__all__ = ["is_operator", "operator_of"]


def operator_of(request: HttpRequest) -> User:
    """The operator making ``request``; ``PermissionDenied`` (403) for anyone else.

    Call it after ``login_required``, so anonymous visitors are sent to the login
    page instead of being told they lack a permission.
    """
    user = request.user
    if not isinstance(user, User) or not is_operator(user):
        raise PermissionDenied("Only operators can request runs.")
    return user
