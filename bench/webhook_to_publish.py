"""Latency from a signed GitHub push to its node configs in S3.

Run: ``python bench/webhook_to_publish.py [--pushes 20] [--services 50]``.

Everything is real and local: a SeaweedFS S3 server, ``redis-server``, a Celery
worker and gunicorn (the control plane, on a SQLite file), and a Git server over
HTTP with a token. Each push commits a change to one service, delivers the signed
``push`` webhook and times until the node config in S3 holds the change. The
first push (a fresh clone of the repository) is reported on its own; p50/p95 are
over the pushes after it, with the ratio to the 1 s p50 target.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.celerystack import (
    FULL_NAME,
    S3Target,
    Stack,
    control_plane,
)
from tests.conftest import S3Server, start_s3_server, stop_process_group
from tests.gitserver import GitHTTPServer, commit_tree

TARGET_P50_SECONDS = 1.0
NODE_TYPES = 5
GIT_TOKEN = "ghp_bench-token"
POLL_SECONDS = 0.01
TIMEOUT_SECONDS = 60.0


def service(n: int, marker: str = "0") -> dict[str, Any]:
    """Service ``n``: networked, with env, a health check and a port forward."""
    return {
        "name": f"svc-{n:03d}",
        "image": f"/var/lib/images/svc-{n:03d}.ext4",
        "node_type": f"pool-{n % NODE_TYPES}",
        "network": True,
        "vcpus": 1 + n % 2,
        "memory_mb": 256,
        "env": {"SERVICE_INDEX": str(n), "BUILD": marker},
        "port_forwards": [{"host_port": 20000 + n, "vm_port": 8080}],
        "health_check": {"type": "http", "port": 8080, "path": "/health"},
    }


def spec_files(count: int) -> dict[str, str | None]:
    files: dict[str, str | None] = {
        "defaults.yaml": yaml.safe_dump({"kernel": "/var/lib/images/vmlinux-6.1"})
    }
    for n in range(count):
        files[f"services/svc-{n:03d}.yaml"] = yaml.safe_dump(service(n))
    return files


class S3:
    """A SeaweedFS S3 server on loopback, as the test suite starts it."""

    def __init__(self, workdir: Path) -> None:
        self.server, self.proc = start_s3_server(workdir)

    def close(self) -> None:
        stop_process_group(self.proc)


def wait_for(s3: S3Server, bucket: str, key: str, marker: str) -> None:
    """Poll the object until it holds ``marker``."""
    needle = marker
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        try:
            body = s3.admin.get_object(Bucket=bucket, Key=key)["Body"].read()
        except s3.admin.exceptions.NoSuchKey:
            body = b""
        if needle.encode() in body:
            return
        time.sleep(POLL_SECONDS)
    raise RuntimeError(f"{key} never showed {needle}")


def one_push(
    stack: Stack, origin: Path, s3: S3Server, bucket: str, n: int, marker: str
) -> tuple[float, dict[str, Any]]:
    """Change service ``n``, push, and time until S3 has it; return the revision."""
    sha = commit_tree(
        origin,
        {f"services/svc-{n:03d}.yaml": yaml.safe_dump(service(n, marker))},
        f"svc-{n:03d}: build {marker}",
    )
    started = time.perf_counter()
    response = stack.plane.push(FULL_NAME, sha)
    if response.status_code != 202:
        raise RuntimeError(f"webhook answered {response.status_code}: {response.text}")
    wait_for(s3, bucket, f"nodes/pool-{n % NODE_TYPES}.yaml", marker)
    elapsed = time.perf_counter() - started
    revision = stack.plane.wait_finished(response.json()["revision"])
    if revision["status"] != "succeeded" or revision["commit_sha"] != sha:
        raise RuntimeError(f"unexpected revision: {revision}")
    return elapsed, revision


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pushes", type=int, default=20)
    parser.add_argument("--services", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="firework-bench-") as tmp:
        workdir = Path(tmp)
        origin = workdir / "origin"
        commit_tree(origin, spec_files(args.services), "initial specs")
        s3 = S3(workdir)
        try:
            bucket = f"bench-{uuid.uuid4().hex[:8]}"
            s3.server.admin.create_bucket(Bucket=bucket)
            target = S3Target(
                endpoint_url=s3.server.endpoint_url,
                region=s3.server.region,
                access_key=s3.server.access_key,
                secret_key=s3.server.secret_key,
                bucket=bucket,
            )
            with (
                GitHTTPServer({"ops.git": origin}, token=GIT_TOKEN) as git,
                control_plane(
                    workdir,
                    clone_url=f"{git.url}/ops.git",
                    git_token=GIT_TOKEN,
                    s3=target,
                ) as stack,
            ):
                report(run_pushes(stack, origin, s3.server, bucket, args), args)
        finally:
            s3.close()


def run_pushes(
    stack: Stack, origin: Path, s3: S3Server, bucket: str, args: argparse.Namespace
) -> list[tuple[float, dict[str, Any]]]:
    results = []
    for i in range(args.pushes + 1):  # the first one clones: reported apart
        n = (i * 7) % args.services
        marker = f"build-{uuid.uuid4().hex[:12]}"
        results.append(one_push(stack, origin, s3, bucket, n, marker))
    return results


def report(
    results: list[tuple[float, dict[str, Any]]], args: argparse.Namespace
) -> None:
    (cold, _), warm = results[0], results[1:]
    latencies = [elapsed for elapsed, _ in warm]
    runs = [r["duration_seconds"] for _, r in warm]
    p50, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
    print(
        f"webhook -> configs in S3, {args.services} services, "
        f"{NODE_TYPES} node types, {len(warm)} pushes"
    )
    print(f"  first push (fresh clone): {cold:.3f} s")
    print(f"  p50 {p50:.3f} s   p95 {p95:.3f} s   max {max(latencies):.3f} s")
    print(f"  of which the run itself (p50): {statistics.median(runs):.3f} s")
    print(
        f"  p50 / target ({TARGET_P50_SECONDS:.0f} s): {p50 / TARGET_P50_SECONDS:.2f}"
        f"  ({'meets' if p50 < TARGET_P50_SECONDS else 'misses'} the target)"
    )


if __name__ == "__main__":
    main()
