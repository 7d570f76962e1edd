"""DATABASE_URL with a real PostgreSQL server: migrate and create the operator.

The server is started from Debian's postgresql package (installed by .ci/run) in a
temporary directory, listening on loopback only.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import free_ports

ROOT = Path(__file__).parent.parent


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        pytest.fail(f"{name} not found: install Debian's postgresql package (.ci/run)")
    return found[-1]


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    # not under pytest's tmp dir: that is private to root, and initdb refuses root
    base = Path(tempfile.mkdtemp(prefix="firework-pg-"))
    data, sockets = base / "data", base / "run"
    sockets.mkdir()
    shutil.chown(base, "postgres")
    shutil.chown(sockets, "postgres")
    as_pg = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [
            *as_pg,
            _pg_bin("initdb"),
            "-D",
            str(data),
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-sync",
            "-U",
            "postgres",
        ],
        check=True,
        capture_output=True,
    )
    (port,) = free_ports(1)
    options = (
        f"-c listen_addresses=127.0.0.1 -c port={port} "
        f"-c unix_socket_directories={sockets} -c fsync=off"
    )
    subprocess.run(
        [
            *as_pg,
            _pg_bin("pg_ctl"),
            "-D",
            str(data),
            "-w",
            "-l",
            str(base / "log"),
            "-o",
            options,
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        # the superuser comes in over the socket; TCP logins need a password
        with psycopg.connect(
            f"host={sockets} port={port} user=postgres", autocommit=True
        ) as conn:
            conn.execute("CREATE ROLE fw LOGIN PASSWORD 'p@ss word'")
            conn.execute("CREATE DATABASE firework OWNER fw")
        yield f"postgres://fw:p%40ss%20word@127.0.0.1:{port}/firework"
    finally:
        subprocess.run(
            [*as_pg, _pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)


def manage(
    *args: str, database_url: str, var: Path
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "FIREWORK_VAR_DIR": str(var),
        "FIREWORK_ADMIN_PASSWORD": "a-long-operator-password-42",
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_migrations_and_operator_on_postgresql(postgres: str, tmp_path: Path) -> None:
    for command in (["migrate", "--noinput"], ["ensure_operator"]):
        done = manage(*command, database_url=postgres, var=tmp_path)
        assert done.returncode == 0, done.stderr
    with psycopg.connect(postgres.replace("postgres://", "postgresql://")) as conn:
        row = conn.execute(
            "SELECT is_superuser FROM auth_user WHERE username = 'admin'"
        ).fetchone()
    assert row == (True,)


def test_wrong_password_fails_without_showing_it(postgres: str, tmp_path: Path) -> None:
    wrong = postgres.replace("p%40ss%20word", "hunter2-wrong")
    done = manage("migrate", "--noinput", database_url=wrong, var=tmp_path)
    assert done.returncode != 0
    assert "hunter2-wrong" not in done.stderr + done.stdout
