"""``manage.py setup_example``: a local Git repository of the bundled example specs.

Used by ``make run``: commits ``examples/enricher-input`` into a Git repository
under the var directory (a new commit only when the files changed), registers it
as the config repository ``example`` and requests one enrichment run; with
``--wait`` it waits for a Celery worker to finish it.
"""

from __future__ import annotations

import shutil
import time
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand
from dulwich import porcelain
from dulwich.repo import Repo

from controlplane.models import ConfigRepository, Revision
from controlplane.runs import request_run

EXAMPLE = Path(settings.BASE_DIR) / "examples" / "enricher-input"
AUTHOR = b"Firework example <example@firework.invalid>"


class Command(BaseCommand):
    help = "Create a local Git repository of the example specs and enrich it."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--name", default="example")
        parser.add_argument("--source", type=Path, default=EXAMPLE)
        parser.add_argument(
            "--no-run", action="store_true", help="register only, request no run"
        )
        parser.add_argument(
            "--wait",
            type=float,
            default=0,
            metavar="SECONDS",
            help="with a broker, wait this long for a worker to finish the run",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        target = Path(settings.FIREWORK_VAR_DIR) / "repos" / options["name"]
        sha = sync_repository(options["source"], target)
        repository, created = ConfigRepository.objects.update_or_create(
            name=options["name"],
            defaults={"clone_url": target.as_uri(), "branch": "main"},
        )
        verb = "registered" if created else "updated"
        self.stdout.write(f"{verb} repository {repository.name} at commit {sha}")
        if options["no_run"]:
            return
        revision = request_run(repository, trigger=Revision.Trigger.MANUAL)
        revision = wait_for(revision, options["wait"])
        self.stdout.write(f"revision {revision.pk}: {revision.status}")


def wait_for(revision: Revision, seconds: float) -> Revision:
    """``revision`` once finished, or as it stands after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        revision.refresh_from_db()
        if revision.status in Revision.FINISHED or time.monotonic() >= deadline:
            return revision
        time.sleep(0.1)


def sync_repository(source: Path, target: Path) -> str:
    """Mirror ``source`` into the work tree of ``target`` and commit any change."""
    if not (target / ".git").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        Repo.init(str(target), default_branch=b"main").close()
    for old in target.iterdir():
        if old.name != ".git":
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    shutil.copytree(source, target, dirs_exist_ok=True)
    with Repo(str(target)) as repo:
        index = repo.open_index()
        gone = [path for path in index if not (target / path.decode()).exists()]
        for path in gone:
            del index[path]
        index.write()
        files = [p for p in target.rglob("*") if p.is_file() and ".git" not in p.parts]
        porcelain.add(repo, paths=[str(p) for p in files])
        staged = porcelain.status(repo).staged
        if gone or any(staged.values()) or not _has_commits(repo):
            porcelain.commit(
                repo, message=b"Example specs", author=AUTHOR, committer=AUTHOR
            )
        return repo.head().decode()


def _has_commits(repo: Repo) -> bool:
    try:
        repo.head()
    except KeyError:
        return False
    return True
