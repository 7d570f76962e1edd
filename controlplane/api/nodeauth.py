"""How a node proves who it is, and what it may then do in the API.

A node sends ``Authorization: Bearer fwn_...``. The request then has no user
(``request.user`` is anonymous) and the :class:`NodeToken` as ``request.auth``,
so every permission that wants a logged-in user refuses it; only the node
permissions here let it through, and only for its own node.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib.auth.models import AnonymousUser
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from controlplane.api.nodebearer import KEYWORD, bearer_node_token
from controlplane.api.permissions import IsOperatorOrReadOnly
from controlplane.models import NodeToken
from controlplane.nodetokens import node_token_for

if TYPE_CHECKING:
    # only for annotations: importing it here would be circular, since
    # rest_framework.views loads the authentication classes of the settings
    from rest_framework.views import APIView

# The WWW-Authenticate header of a 401 where a node token is taken.
CHALLENGE = f'{KEYWORD} realm="api"'
REFUSED_CREDENTIAL = "invalid or revoked node token"


class NodeTokenAuthentication(BaseAuthentication):
    """``Authorization: Bearer fwn_...``: a node token; other headers pass on."""

    def authenticate(self, request: Request) -> tuple[AnonymousUser, NodeToken] | None:
        token = bearer_node_token(request)
        if token is None:
            return None
        record = node_token_for(token)
        if record is None:
            raise exceptions.AuthenticationFailed(REFUSED_CREDENTIAL)
        return AnonymousUser(), record

    def authenticate_header(self, request: Request) -> str:
        return CHALLENGE


class NodeTokenScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    """The node token in the OpenAPI schema."""

    target_class = "controlplane.api.nodeauth.NodeTokenAuthentication"
    match_subclasses = True
    name = "nodeTokenAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "fwn_... token"}


def requesting_node(request: Request) -> str | None:
    """The name of the node whose token authenticated ``request``, if any."""
    auth = request.auth
    return auth.node.name if isinstance(auth, NodeToken) else None


def _own_node(request: Request, view: APIView) -> bool:
    name = requesting_node(request)
    return name is not None and name == view.kwargs.get("name")


class IsOwnNode(BasePermission):
    """Only the node named in the URL, with its own token."""

    message = "only the node itself may do this, with its node token"

    def has_permission(self, request: Request, view: APIView) -> bool:
        return _own_node(request, view)


class ReadOwnNodeOrUser(IsOperatorOrReadOnly):
    """Users as :class:`IsOperatorOrReadOnly`; a node may read its own node only."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        if requesting_node(request) is not None:
            return request.method in SAFE_METHODS and _own_node(request, view)
        return super().has_permission(request, view)
