"""``manage.py enrich SOURCE``: validate and enrich service specs into node configs."""

from __future__ import annotations

import os
import tempfile
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from controlplane.enrichment import PipelineResult, run_pipeline
from controlplane.envvars import env_secret
from controlplane.gitsource import GitSourceError, clone, is_git_url
from controlplane.objectstore import (
    LocalStore,
    ObjectStore,
    ObjectStoreError,
    store_from_env,
)
from controlplane.publish import PublishError, publish


class Command(BaseCommand):
    help = (
        "Enrich service specs from a directory or Git URL into node configs; "
        "exit 1 listing every validation error."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("source", help="directory or Git URL of the specs")
        parser.add_argument("--output", type=Path, help="write DIR/nodes/*.yaml")
        parser.add_argument(
            "--publish",
            action="store_true",
            help="publish to the configured object store (FIREWORK_STORE)",
        )
        parser.add_argument(
            "--allow-empty",
            action="store_true",
            help="allow a result without services (deletes every node config)",
        )
        parser.add_argument("--branch", help="Git branch (default: remote HEAD)")
        parser.add_argument(
            "--subdir", default="", help="directory of the specs inside the source"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        source: str = options["source"]
        with tempfile.TemporaryDirectory(prefix="firework-enrich-") as tmp:
            root = self._checkout(source, Path(tmp), options["branch"])
            root = root / options["subdir"] if options["subdir"] else root
            if not root.is_dir():
                raise CommandError(f"{root} is not a directory")
            result = run_pipeline(root)
        self._report(result)
        if not result.ok:
            raise CommandError(f"{len(result.errors)} validation error(s)")
        targets: list[ObjectStore] = []
        if options["output"]:
            targets.append(LocalStore(options["output"]))
        if options["publish"]:
            targets.append(store_from_env(os.environ))
        for store in targets:
            self._publish(store, result, options["allow_empty"])

    def _checkout(self, source: str, tmp: Path, branch: str | None) -> Path:
        if not is_git_url(source):
            return Path(source)
        try:
            sha = clone(source, tmp / "repo", branch=branch, token=_git_token())
        except GitSourceError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"commit {sha}")
        return tmp / "repo"

    def _report(self, result: PipelineResult) -> None:
        for node_type, names in result.services.items():
            self.stdout.write(
                f"node type {node_type}: {len(names)} service(s): {', '.join(names)}"
            )
        for warning in result.warnings:
            self.stderr.write(f"warning: {warning}")
        for error in result.errors:
            self.stderr.write(f"error: {error}")

    def _publish(self, store: ObjectStore, result: PipelineResult, empty: bool) -> None:
        try:
            report = publish(store, result, allow_empty=empty)
        except (PublishError, ObjectStoreError) as exc:
            raise CommandError(f"publishing to {store.describe()}: {exc}") from None
        self.stdout.write(
            f"published {len(report.configs)} node config(s) to {store.describe()}"
            f", deleted {len(report.deleted)} stale"
        )


def _git_token() -> str | None:
    return env_secret("FIREWORK_GIT_TOKEN") or None
