"""Viewsets of repositories and revisions (enrichment runs).

Runs are requested through :func:`controlplane.runs.request_run`, the same path
the webhook and the dashboard use; the API answers 202 with the queued revision
and leaves the work to the Celery task.
"""

from __future__ import annotations

import logging
from typing import Any

from django.contrib.auth.models import User
from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import APIException
from rest_framework.request import Request
from rest_framework.response import Response

from controlplane.api.permissions import IsOperatorOrReadOnly
from controlplane.api.serializers import (
    RepositorySerializer,
    RevisionCreateSerializer,
    RevisionDetailSerializer,
    RevisionSerializer,
    RunRequestSerializer,
)
from controlplane.models import ConfigRepository, Revision
from controlplane.runs import request_run

log = logging.getLogger(__name__)

_QUEUED = OpenApiResponse(RevisionDetailSerializer, description="run queued")
_INACTIVE = OpenApiResponse(description="the repository is inactive")


class RepositoryInactive(APIException):
    """A run was asked for a repository that is switched off."""

    status_code = status.HTTP_409_CONFLICT
    default_detail = "the repository is inactive; activate it to run it"
    default_code = "repository_inactive"


def _queue_run(
    request: Request, repository: ConfigRepository, ref: str, commit_sha: str
) -> Response:
    """Queue a run requested through the API and answer 202 with its revision."""
    if not repository.active:
        raise RepositoryInactive(
            f"repository {repository.name} is inactive; activate it to run it"
        )
    user = request.user if isinstance(request.user, User) else None
    revision = request_run(
        repository,
        trigger=Revision.Trigger.API,
        ref=ref,
        commit_sha=commit_sha,
        requested_by=user,
    )
    log.info(
        "api run queued repository=%s revision=%s user=%s",
        repository.name,
        revision.pk,
        user.get_username() if user else "-",
    )
    revision = _revisions().prefetch_related("outputs").get(pk=revision.pk)
    body = RevisionDetailSerializer(revision, context={"request": request}).data
    return Response(
        body, status=status.HTTP_202_ACCEPTED, headers={"Location": body["url"]}
    )


def _revisions() -> QuerySet[Revision]:
    return Revision.objects.select_related("repository", "requested_by")


@extend_schema_view(
    list=extend_schema(summary="List config repositories"),
    retrieve=extend_schema(summary="Show a config repository"),
    create=extend_schema(summary="Register a config repository (operators)"),
    update=extend_schema(summary="Replace a config repository (operators)"),
    partial_update=extend_schema(summary="Change a config repository (operators)"),
    destroy=extend_schema(
        summary="Delete a config repository and its runs (operators)"
    ),
)
class RepositoryViewSet(viewsets.ModelViewSet[ConfigRepository]):
    """Config repositories: Git repositories of service specs to enrich."""

    queryset = ConfigRepository.objects.all()
    serializer_class = RepositorySerializer
    permission_classes = [IsOperatorOrReadOnly]

    def get_serializer_class(self) -> type[serializers.BaseSerializer[Any]]:
        if self.action == "run":
            return RunRequestSerializer
        return RepositorySerializer

    # ``**kwargs`` here and below: format-suffix routes (``runs.json``) pass
    # ``format``.
    @extend_schema(
        summary="Run enrichment of this repository (operators)",
        request=RunRequestSerializer,
        responses={202: _QUEUED, 409: _INACTIVE},
    )
    @action(detail=True, methods=["post"], url_path="runs")
    def run(self, request: Request, pk: str, **kwargs: Any) -> Response:
        """Queue a run for a commit, or for the head of a branch."""
        repository = self.get_object()
        params = self.get_serializer(data=request.data)
        params.is_valid(raise_exception=True)
        return _queue_run(
            request,
            repository,
            params.validated_data.get("ref", ""),
            params.validated_data.get("commit_sha", ""),
        )


class RevisionFilterSerializer(serializers.Serializer[dict[str, Any]]):
    """Query parameters that narrow the revision list."""

    repository = serializers.IntegerField(
        required=False, min_value=1, help_text="repository id"
    )
    status = serializers.ChoiceField(choices=Revision.Status.choices, required=False)
    trigger = serializers.ChoiceField(choices=Revision.Trigger.choices, required=False)
    commit_sha = serializers.RegexField(
        r"^[0-9a-fA-F]{40}$", required=False, help_text="full commit SHA"
    )


@extend_schema_view(
    list=extend_schema(
        summary="List enrichment runs, newest first",
        parameters=[RevisionFilterSerializer],
    ),
    retrieve=extend_schema(summary="Show an enrichment run with its output"),
)
class RevisionViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet[Revision],
):
    """Revisions: one enrichment run of a repository at one commit each."""

    permission_classes = [IsOperatorOrReadOnly]
    serializer_class = RevisionSerializer
    queryset = Revision.objects.all()

    def get_queryset(self) -> QuerySet[Revision]:
        revisions = _revisions()
        if self.action == "list":
            return self._filtered(revisions)
        return revisions.prefetch_related("outputs")

    def get_serializer_class(self) -> type[serializers.BaseSerializer[Any]]:
        if self.action == "list":
            return RevisionSerializer
        if self.action == "create":
            return RevisionCreateSerializer
        return RevisionDetailSerializer

    def _filtered(self, revisions: QuerySet[Revision]) -> QuerySet[Revision]:
        query = RevisionFilterSerializer(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        wanted = dict(query.validated_data)
        if "repository" in wanted:
            wanted["repository_id"] = wanted.pop("repository")
        if "commit_sha" in wanted:
            wanted["commit_sha"] = wanted["commit_sha"].lower()
        return revisions.filter(**wanted)

    @extend_schema(
        summary="Run enrichment of a repository (operators)",
        request=RevisionCreateSerializer,
        responses={202: _QUEUED, 409: _INACTIVE},
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Queue a run for a commit, or for the head of a branch."""
        params = self.get_serializer(data=request.data)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        return _queue_run(
            request,
            data["repository"],
            data.get("ref", ""),
            data.get("commit_sha", ""),
        )

    @extend_schema(
        summary="Run this revision's repository, ref and commit again (operators)",
        request=None,
        responses={202: _QUEUED, 409: _INACTIVE},
    )
    @action(detail=True, methods=["post"])
    def rerun(self, request: Request, pk: str, **kwargs: Any) -> Response:
        """Queue a new run of the same repository, ref and commit."""
        revision = self.get_object()
        return _queue_run(
            request, revision.repository, revision.ref, revision.commit_sha
        )
