"""Nodes: registering them, their credentials, and the status they report.

Operators create a node and an enrollment token for it; the node's agent
exchanges that token once for its node token, and from then on reports its
status with it. A node token opens only its own node's detail, latest report
and status endpoint (see :mod:`controlplane.api.nodeauth`).
"""

from __future__ import annotations

import logging
from typing import Any, NoReturn

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.authentication import BaseAuthentication
from rest_framework.decorators import action
from rest_framework.exceptions import (
    NotAuthenticated,
    PermissionDenied,
)
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from controlplane.api.nodeauth import (
    IsOwnNode,
    NodeTokenAuthentication,
    ReadOwnNodeOrUser,
    requesting_node,
)
from controlplane.api.nodeserializers import (
    CancelledSerializer,
    EnrolledSerializer,
    EnrollmentTokenSerializer,
    EnrollRequestSerializer,
    NodeDetailSerializer,
    NodeSerializer,
    RevokedSerializer,
    StatusReportSerializer,
)
from controlplane.api.permissions import IsOperatorOrReadOnly
from controlplane.api.statusreports import NODE_CREDENTIAL_WANTED, receive_report
from controlplane.models import Node
from controlplane.nodestatus import views_for
from controlplane.nodetokens import (
    EnrollmentRefused,
    cancel_enrollment_tokens,
    enroll,
    issue_enrollment_token,
    revoke_node_tokens,
)

log = logging.getLogger(__name__)

# What the schema lists for endpoints a node token may not call (Any: the
# stubs type ``auth`` as names, drf-spectacular takes these requirements).
USERS_ONLY: Any = [{"tokenAuth": []}, {"cookieAuth": []}]


def _node_or_user_auth() -> list[type[BaseAuthentication]]:
    # The node token first: a node that calls a users' endpoint is then known
    # and refused (403), not taken for anonymous.
    users: list[type[BaseAuthentication]] = list(
        api_settings.DEFAULT_AUTHENTICATION_CLASSES  # type: ignore[arg-type]
    )
    return [NodeTokenAuthentication, *users]


@extend_schema_view(
    list=extend_schema(summary="List nodes", auth=USERS_ONLY),
    retrieve=extend_schema(
        summary="Show a node and its latest report (users, or the node itself)"
    ),
    create=extend_schema(summary="Register a node (operators)", auth=USERS_ONLY),
    destroy=extend_schema(
        summary="Delete a node and its tokens (operators)", auth=USERS_ONLY
    ),
)
class NodeViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet[Node],
):
    """Nodes: hosts running the node agent."""

    queryset = Node.objects.all()
    lookup_field = "name"
    authentication_classes = _node_or_user_auth()
    permission_classes = [ReadOwnNodeOrUser]

    def get_serializer_class(self) -> type[serializers.BaseSerializer[Any]]:
        if self.action == "list" or self.action == "create":
            return NodeSerializer
        return NodeDetailSerializer

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """One page of nodes, compared with the published configs read once."""
        queryset = self.filter_queryset(self.get_queryset())
        page = self.paginate_queryset(queryset)
        nodes = list(queryset if page is None else page)
        context = self.get_serializer_context()
        context["node_views"] = {view.name: view for view in views_for(nodes)}
        data = NodeSerializer(nodes, many=True, context=context).data
        if page is None:
            return Response(data)
        return self.get_paginated_response(data)

    def perform_create(self, serializer: serializers.BaseSerializer[Node]) -> None:
        node = serializer.save()
        log.info("node created node=%s", node.name)

    def perform_destroy(self, instance: Node) -> None:
        log.info("node deleted node=%s", instance.name)
        instance.delete()

    @extend_schema(
        methods=["POST"],
        summary="Make a one-time enrollment token for this node (operators)",
        description="The token is in this answer only and expires after a day. "
        "The node's earlier unused enrollment token stops working.",
        auth=USERS_ONLY,
        request=None,
        responses={201: EnrollmentTokenSerializer},
    )
    @extend_schema(
        methods=["DELETE"],
        summary="Cancel the node's unused enrollment token (operators)",
        auth=USERS_ONLY,
        request=None,
        responses={200: CancelledSerializer},
    )
    @action(detail=True, methods=["post", "delete"], url_path="enrollment-tokens")
    def enrollment_tokens(self, request: Request, name: str, **kwargs: Any) -> Response:
        """POST issues a token, DELETE cancels the unused ones."""
        node = self.get_object()
        if request.method == "DELETE":
            cancelled = cancel_enrollment_tokens(node)
            return Response(CancelledSerializer({"cancelled": cancelled}).data)
        token, record = issue_enrollment_token(node)
        body = EnrollmentTokenSerializer(
            {"token": token, "expires_at": record.expires_at}
        ).data
        return Response(body, status=status.HTTP_201_CREATED)


class NodeEnrollView(APIView):
    """``POST nodes/<name>/enroll``: an enrollment token for a node token."""

    authentication_classes: list[type[BaseAuthentication]] = []
    permission_classes = [AllowAny]

    @extend_schema(
        summary="Exchange a one-time enrollment token for a node token (no login)",
        request=EnrollRequestSerializer,
        responses={
            201: EnrolledSerializer,
            403: OpenApiResponse(description="invalid, expired or used token"),
        },
    )
    def post(self, request: Request, name: str) -> Response:
        params = EnrollRequestSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        try:
            node, token = enroll(name, params.validated_data["enrollment_token"])
        except EnrollmentRefused as exc:
            raise PermissionDenied(str(exc)) from None
        body = EnrolledSerializer({"node": node.name, "token": token}).data
        return Response(body, status=status.HTTP_201_CREATED)


class NodeRevokeTokensView(APIView):
    """``POST nodes/<name>/revoke-tokens``: every node token stops working."""

    authentication_classes = _node_or_user_auth()
    permission_classes = [IsOperatorOrReadOnly]

    @extend_schema(
        summary="Revoke every node token of this node (operators)",
        auth=USERS_ONLY,
        request=None,
        responses={200: RevokedSerializer},
    )
    def post(self, request: Request, name: str) -> Response:
        node = get_object_or_404(Node, name=name)
        revoked = revoke_node_tokens(node)
        return Response(RevokedSerializer({"revoked": revoked}).data)


class NodeStatusView(APIView):
    """``POST nodes/<name>/status``: the node's own status report.

    POST is answered by :func:`~controlplane.api.statusreports.receive_report`
    without DRF's request handling (it comes from every node every tick); the
    class describes it in the schema and answers the other methods.
    """

    # Users' credentials are not even looked at: a session's CSRF check could
    # read the body before its size is checked.
    authentication_classes = [NodeTokenAuthentication]
    permission_classes = [IsOwnNode]

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        if request.method == "POST":
            return receive_report(request, kwargs["name"])
        return super().dispatch(request, *args, **kwargs)

    def permission_denied(
        self, request: Request, message: str | None = None, code: str | None = None
    ) -> NoReturn:
        if not request.successful_authenticator:
            raise NotAuthenticated(NODE_CREDENTIAL_WANTED)
        super().permission_denied(request, message, code)

    @extend_schema(
        summary="Report this node's status (its node token only)",
        description="``POST nodes/<name>/status``: the node's own status report.",
        request=StatusReportSerializer,
        responses={
            204: OpenApiResponse(description="stored"),
            413: OpenApiResponse(description="the report is over the size limit"),
        },
    )
    def post(self, request: Request, name: str) -> HttpResponse:
        """Not reached through :meth:`dispatch`; the schema reads it."""
        return receive_report(request._request, name)


class NodeActualView(APIView):
    """``GET nodes/<name>/actual``: the node's latest report as it sent it."""

    authentication_classes = _node_or_user_auth()
    permission_classes = [ReadOwnNodeOrUser]

    @extend_schema(
        summary="Show the latest report of a node (users, or the node itself)",
        responses={
            200: OpenApiResponse(OpenApiTypes.OBJECT, description="the report"),
            404: OpenApiResponse(description="no such node, or no report yet"),
        },
    )
    def get(self, request: Request, name: str) -> Response:
        node = get_object_or_404(Node, name=name)
        if node.last_report is None:
            return Response(
                {"detail": f"node {name} has not reported yet"},
                status=status.HTTP_404_NOT_FOUND,
            )
        log.debug("node report read node=%s by_node=%s", name, requesting_node(request))
        return Response(node.last_report)
