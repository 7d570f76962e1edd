"""A node token in a request, and its refusal on the users' endpoints.

Kept apart from :mod:`controlplane.api.nodeauth` with few imports: DRF loads
:class:`NodeCredentialsRefused` from ``DEFAULT_AUTHENTICATION_CLASSES`` while
``rest_framework.views`` is being imported, so nothing here may need that.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from controlplane.nodetokens import NODE_PREFIX

KEYWORD = "Bearer"
NODE_CREDENTIALS_REFUSED = "node credentials cannot use this endpoint"


def bearer_node_token(request: Request | HttpRequest) -> str | None:
    """The ``fwn_`` token in ``Authorization: Bearer ...``; ``None`` if there is none.

    Takes DRF's request or Django's: the status endpoint reads it from the latter.
    """
    header = request.headers.get("Authorization", "")
    # encoded as DRF reads the header (HTTP_HEADER_ENCODING), so both agree
    raw = header.encode("iso-8859-1", "replace") if isinstance(header, str) else header
    parts = raw.split()
    if len(parts) != 2 or parts[0].decode("latin-1") != KEYWORD:
        return None
    try:
        token = parts[1].decode("ascii")
    except UnicodeDecodeError:
        return None
    return token if token.startswith(NODE_PREFIX) else None


class NodeCredentialsRefused(BaseAuthentication):
    """Last of the users' authentications: a node token there is a 403.

    Without it a node token on, say, ``/api/v1/repositories/`` reads as no
    credentials at all (401), which sends a node's operator looking for an
    expired token. The token is not looked up: valid or not, node credentials
    have no business here. Being last, it changes neither the 401 challenge
    (DRF takes it from the first class) nor any user's way in.
    """

    def authenticate(self, request: Request) -> None:
        if bearer_node_token(request) is not None:
            raise exceptions.PermissionDenied(NODE_CREDENTIALS_REFUSED)


class NodeCredentialsRefusedScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    """Nothing for the schema: this class lets nobody in."""

    target_class = "controlplane.api.nodebearer.NodeCredentialsRefused"
    name: list[str] = []

    def get_security_requirement(self, auto_schema: Any) -> list[dict[str, Any]]:
        return []

    def get_security_definition(self, auto_schema: Any) -> list[dict[str, Any]]:
        return []
