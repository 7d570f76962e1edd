"""Nodes: registering them, their credentials, and the status they report.

Operators create a node and an enrollment token for it; the node's agent
exchanges that token once for its node token, and from then on reports its
status with it. A node token opens only its own node's detail, latest report
and status endpoint (see :mod:`controlplane.api.nodeauth`).
"""

from __future__ import annotations

import json
import logging
from typing import Any, NoReturn

from django.conf import settings
from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.authentication import BaseAuthentication
from rest_framework.decorators import action
from rest_framework.exceptions import (
    APIException,
    NotAuthenticated,
    ParseError,
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
    EnrolledSerializer,
    EnrollmentTokenSerializer,
    EnrollRequestSerializer,
    NodeDetailSerializer,
    NodeSerializer,
    RevokedSerializer,
    StatusReportSerializer,
)
from controlplane.api.permissions import IsOperatorOrReadOnly
from controlplane.models import Node, NodeToken
from controlplane.nodereports import ingest
from controlplane.nodestatus import views_for
from controlplane.nodetokens import (
    EnrollmentRefused,
    enroll,
    issue_enrollment_token,
    revoke_node_tokens,
)
from controlplane.webhook_body import (
    Rejected,
    body_stream,
    declared_length,
    read_capped,
)

log = logging.getLogger(__name__)

DEFAULT_REPORT_MAX_BYTES = 256 * 1024
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


def report_max_bytes() -> int:
    """The largest status report accepted, in bytes."""
    return int(
        getattr(settings, "FIREWORK_NODE_REPORT_MAX_BYTES", DEFAULT_REPORT_MAX_BYTES)
    )


class ReportTooLarge(APIException):
    """A status report over the size limit."""

    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "the report is too large"
    default_code = "report_too_large"


class BodyRefused(APIException):
    """A report body that cannot be read: bad or missing ``Content-Length``."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "body_refused"


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
        summary="Make a one-time enrollment token for this node (operators)",
        auth=USERS_ONLY,
        request=None,
        responses={201: EnrollmentTokenSerializer},
    )
    @action(detail=True, methods=["post"], url_path="enrollment-tokens")
    def enrollment_tokens(self, request: Request, name: str, **kwargs: Any) -> Response:
        """The token is in this answer only; it expires after a day."""
        node = self.get_object()
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


def _read_report(request: Request) -> Any:
    """The JSON body, refused over the size limit before it is read."""
    django_request = request._request
    meta = django_request.META
    limit = report_max_bytes()
    try:
        length = declared_length(meta, limit)
        stream = body_stream(django_request, meta)
        body = read_capped(stream, length=length, limit=limit, sink=lambda _: None)
    except Rejected as exc:
        if exc.status == status.HTTP_413_REQUEST_ENTITY_TOO_LARGE:
            raise ReportTooLarge(exc.message) from None
        raise BodyRefused(exc.message) from None
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ParseError(f"the body is not JSON: {exc}") from None


class NodeStatusView(APIView):
    """``POST nodes/<name>/status``: the node's own status report."""

    # Users' credentials are not even looked at: a session's CSRF check could
    # read the body before its size is checked.
    authentication_classes = [NodeTokenAuthentication]
    permission_classes = [IsOwnNode]

    def permission_denied(
        self, request: Request, message: str | None = None, code: str | None = None
    ) -> NoReturn:
        if not request.successful_authenticator:
            raise NotAuthenticated(
                "this endpoint takes a node token: Authorization: Bearer fwn_..."
            )
        super().permission_denied(request, message, code)

    @extend_schema(
        summary="Report this node's status (its node token only)",
        request=StatusReportSerializer,
        responses={
            204: OpenApiResponse(description="stored"),
            413: OpenApiResponse(description="the report is over the size limit"),
        },
    )
    def post(self, request: Request, name: str) -> Response:
        data = _read_report(request)
        if not isinstance(data, dict):
            raise ParseError("the body must be a JSON object")
        report = StatusReportSerializer(data=data)
        report.is_valid(raise_exception=True)
        # IsOwnNode checked that the token's node is this one: no second query.
        token = request.auth
        assert isinstance(token, NodeToken)  # the only authenticator here
        ingest(token.node, dict(report.data), timezone.now())
        return Response(status=status.HTTP_204_NO_CONTENT)


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
