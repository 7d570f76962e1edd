"""Image sync throughput against a plain boto3 ``download_file`` of the same object.

Run: ``python bench/image_sync.py [--size-mb 500] [--repeats 3]``.

Starts its own SeaweedFS S3 server on loopback (data under /var/tmp), uploads one
object of random bytes (generated as it streams, never held whole), then times
alternately (a) ``client.download_file`` to a fresh path and (b)
``ImageSync.sync`` into an empty images dir. The sync also fsyncs the file and
its directory, which ``download_file`` does not; ``os.sync()`` runs between
timings so neither pays for the other's writeback. Reports the median MB/s of
each, their ratio (target >= 0.9) and the time of a second, conditional sync.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nodeagent.images import ImageSync
from tests.conftest import S3Server, start_s3_server, stop_process_group

TARGET_RATIO = 0.9
KEY = "bench/rootfs.ext4"
MB = 1 << 20


class RandomBytes:
    """A readable stream of ``size`` random bytes, made as they are read."""

    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, count: int = -1) -> bytes:
        if count < 0 or count > self.left:
            count = self.left
        self.left -= count
        return os.urandom(count)


def upload(server: S3Server, bucket: str, size: int) -> float:
    started = time.perf_counter()
    server.admin.upload_fileobj(RandomBytes(size), bucket, KEY)
    return time.perf_counter() - started


def timed(action: Callable[[], Any]) -> float:
    os.sync()
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def plain_download(server: S3Server, bucket: str, target: Path) -> float:
    client = server.client()
    return timed(lambda: client.download_file(bucket, KEY, str(target)))


def image_sync(server: S3Server, bucket: str, images: Path) -> tuple[float, float]:
    """Seconds of a first sync into ``images``, then of a second (304) one."""
    sync = ImageSync(
        bucket,
        images,
        region=server.region,
        endpoint_url=server.endpoint_url,
        access_key=server.access_key,
        secret_key=server.secret_key,
    )
    path = str(images / KEY)

    def run() -> None:
        result = sync.sync([path])
        if result[path] is not None:
            raise RuntimeError(result[path])

    first = timed(run)
    return first, timed(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mb * MB
    free = shutil.disk_usage("/var/tmp").free
    if free < 4 * size:
        sys.exit(f"/var/tmp has {free // MB} MB free, need {4 * size // MB} MB")
    with tempfile.TemporaryDirectory(prefix="firework-bench-", dir="/var/tmp") as tmp:
        workdir = Path(tmp)
        (workdir / "weed").mkdir()
        server, proc = start_s3_server(workdir / "weed")
        try:
            bucket = f"bench-{uuid.uuid4().hex[:8]}"
            server.admin.create_bucket(Bucket=bucket)
            print(f"upload {args.size_mb} MB: {upload(server, bucket, size):.1f} s")
            report(args.size_mb, *measure(server, bucket, workdir, args.repeats))
        finally:
            stop_process_group(proc)


def measure(
    server: S3Server, bucket: str, workdir: Path, repeats: int
) -> tuple[list[float], list[float], list[float]]:
    """Alternating runs; every file is removed before the next run starts."""
    plain, synced, conditional = [], [], []
    for n in range(repeats):
        target = workdir / f"plain-{n}"
        plain.append(plain_download(server, bucket, target))
        target.unlink()
        images = workdir / f"images-{n}"
        first, second = image_sync(server, bucket, images)
        synced.append(first)
        conditional.append(second)
        shutil.rmtree(images)
    return plain, synced, conditional


def report(
    size_mb: int, plain: list[float], synced: list[float], conditional: list[float]
) -> None:
    def rates(seconds: list[float]) -> list[float]:
        return [size_mb / s for s in seconds]

    plain_rate = statistics.median(rates(plain))
    sync_rate = statistics.median(rates(synced))
    ratio = sync_rate / plain_rate
    print(f"object {size_mb} MB, {len(plain)} runs each, alternating")
    print(
        f"  boto3 download_file: median {plain_rate:.0f} MB/s "
        f"({', '.join(f'{r:.0f}' for r in rates(plain))})"
    )
    print(
        f"  ImageSync.sync:      median {sync_rate:.0f} MB/s "
        f"({', '.join(f'{r:.0f}' for r in rates(synced))})"
    )
    print(
        f"  ratio sync / download_file: {ratio:.2f} "
        f"({'meets' if ratio >= TARGET_RATIO else 'misses'} the {TARGET_RATIO} target)"
    )
    print(
        f"  second sync (conditional, 304): median "
        f"{statistics.median(conditional) * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
