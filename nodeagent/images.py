"""Kernel, rootfs and initrd images fetched from an S3 bucket before a service starts.

A file under ``images_dir`` is the object whose key is its path relative to
``images_dir``. Next to each fetched file a sidecar ``<file>.etag`` records the
ETag and size of what is on disk, so an unchanged image costs one conditional
GET answered with 304. The sidecar only counts when the file has its size: a
missing or truncated image is always downloaded again.

Large objects come in parallel ranged GETs pinned to the ETag of the first one
(``If-Match``), written in place into a temp file that replaces the image only
once complete and on disk. Memory stays bounded by workers x read size.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from nodeagent.atomicfile import write_atomic
from nodeagent.s3client import error_code, http_status, make_client, scrub
from nodeagent.stores.factory import read_secret_file

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from nodeagent.config import AgentConfig

log = logging.getLogger(__name__)

MIB = 1 << 20
PART_SIZE = 8 * MIB
PART_WORKERS = 8
READ_SIZE = 1 * MIB
PROGRESS_EVERY = 64 * MIB
SIDECAR_SUFFIX = ".etag"
TEMP_SUFFIX = ".part"
MAX_SIDECAR_BYTES = 4096
_NOT_MODIFIED = frozenset({"304", "NotModified"})
_NOT_FOUND = frozenset({"404", "NoSuchKey"})


class ImageError(Exception):
    """An image is neither present nor fetchable; the message names its path."""


@dataclass(frozen=True)
class _Local:
    """The image on disk, and the ETag it was fetched with if its size still fits."""

    exists: bool
    etag: str | None


class _Progress:
    """Bytes written so far by all parts of one download, logged now and then."""

    def __init__(self, path: Path, total: int, every: int) -> None:
        self.path = path
        self.total = total
        self.every = every
        self.done = 0
        self._next = every
        self._lock = threading.Lock()

    def add(self, count: int) -> None:
        with self._lock:
            self.done += count
            if self.done < self._next or self.done >= self.total:
                return
            self._next = (self.done // self.every + 1) * self.every
            done = self.done
        log.info(
            "image download path=%s done=%.1fMB of %.1fMB",
            self.path,
            done / MIB,
            self.total / MIB,
        )


class ImageSync:
    """Makes image files under ``images_dir`` match their objects in ``bucket``."""

    def __init__(
        self,
        bucket: str,
        images_dir: str | Path,
        *,
        client: S3Client | None = None,
        region: str = "us-east-1",
        endpoint_url: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        parallelism: int = 4,
        part_size: int = PART_SIZE,
        part_workers: int = PART_WORKERS,
        progress_every: int = PROGRESS_EVERY,
    ) -> None:
        self.bucket = bucket
        self.images_dir = Path(images_dir)
        self.parallelism = max(1, parallelism)
        self.part_size = max(1, part_size)
        self.part_workers = max(1, part_workers)
        self.progress_every = max(1, progress_every)
        self._secret = secret_key or ""
        # every file download may hold part_workers connections at once
        pool = max(10, self.parallelism * self.part_workers)
        self.client: S3Client = client or make_client(
            region, endpoint_url, access_key, secret_key, max_pool_connections=pool
        )
        self._locks: dict[Path, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    @classmethod
    def from_config(cls, config: AgentConfig) -> ImageSync | None:
        """The sync the agent config asks for; None without ``s3_images_bucket``.

        Raises ``StoreError`` when a key file is unreadable (the message names
        the key, never the secret).
        """
        if not config.s3_images_bucket:
            return None
        return cls(
            config.s3_images_bucket,
            config.images_dir,
            region=config.s3_region or "us-east-1",
            endpoint_url=config.s3_endpoint_url or None,
            access_key=read_secret_file(
                "s3_access_key_file", config.s3_access_key_file
            ),
            secret_key=read_secret_file(
                "s3_secret_key_file", config.s3_secret_key_file
            ),
            parallelism=config.image_sync_parallelism,
        )

    def sync(self, paths: Iterable[str]) -> dict[str, str | None]:
        """Fetch each distinct path once; per path None if usable, else why not."""
        unique = list(dict.fromkeys(paths))
        if not unique:
            return {}
        workers = min(self.parallelism, len(unique))
        with ThreadPoolExecutor(workers, thread_name_prefix="image-sync") as pool:
            return dict(zip(unique, pool.map(self._result, unique), strict=True))

    def key_for(self, path: str) -> str | None:
        """The object key of ``path``; None when it lies outside ``images_dir``.

        Raises ``ImageError`` for a path that is relative, holds ``..`` or leads
        out of ``images_dir`` through a symlink.
        """
        image = Path(path)
        if not image.is_absolute():
            raise ImageError(f"image {path}: not an absolute path")
        if ".." in image.parts:
            raise ImageError(f"image {path}: '..' is not allowed in an image path")
        try:
            relative = image.relative_to(self.images_dir)
        except ValueError:
            return None
        if not relative.parts:
            raise ImageError(f"image {path}: is images_dir itself, not a file")
        root = Path(os.path.realpath(self.images_dir))
        if not Path(os.path.realpath(image)).is_relative_to(root):
            raise ImageError(
                f"image {path}: a symlink leads out of images_dir {self.images_dir}"
            )
        return relative.as_posix()

    def _result(self, path: str) -> str | None:
        try:
            self._sync_path(path)
        except ImageError as exc:
            log.warning("image sync failed: %s", exc)
            return str(exc)
        except Exception as exc:  # a bug must not stop the other images
            log.exception("image sync failed path=%s", path)
            return f"image {path}: unexpected {type(exc).__name__}"
        return None

    def _sync_path(self, path: str) -> None:
        key = self.key_for(path)
        image = Path(path)
        if key is None:
            if not image.is_file():
                raise ImageError(
                    f"image {path}: not on disk, and outside images_dir "
                    f"{self.images_dir} so not fetched"
                )
            return
        with self._lock_for(image):
            try:
                self._fetch(image, key)
            except OSError as exc:
                reason = exc.strerror or type(exc).__name__
                raise ImageError(f"image {path}: writing: {reason}") from None

    def _lock_for(self, image: Path) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(image, threading.Lock())

    def _fetch(self, image: Path, key: str) -> None:
        """One conditional GET; a download unless it says the file is current."""
        local = _read_local(image)
        try:
            first = self._first_get(key, local.etag)
        except ClientError as exc:
            code = error_code(exc)
            if code in _NOT_MODIFIED:
                log.debug("image current path=%s", image)
                return
            if code in _NOT_FOUND and local.exists:
                log.info(
                    "image not in bucket, using the local file path=%s bucket=%s",
                    image,
                    self.bucket,
                )
                return
            if code in _NOT_FOUND:
                raise ImageError(
                    f"image {image}: not in bucket {self.bucket} and not on disk"
                ) from None
            raise self._client_error(image, key, exc) from None
        except BotoCoreError as exc:
            raise self._fetch_error(image, key, scrub(exc, self._secret)) from None
        self._download(image, key, first)

    def _first_get(self, key: str, etag: str | None) -> Any:
        """The first part, or 304 (as ``ClientError``) if ``etag`` is still current."""
        request: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "Range": f"bytes=0-{self.part_size - 1}",
        }
        if etag:
            request["IfNoneMatch"] = etag
        try:
            return self.client.get_object(**request)
        except ClientError as exc:
            # an empty object has no byte 0 to start a range at
            if http_status(exc) != 416:
                raise
        del request["Range"]
        return self.client.get_object(**request)

    def _download(self, image: Path, key: str, first: Any) -> None:
        """Temp file, all parts, size check, fsync, rename, fsync dir, sidecar."""
        etag = str(first["ETag"])
        total = _total_size(first)
        started = time.monotonic()
        log.info("image download path=%s key=%s size=%.1fMB", image, key, total / MIB)
        try:
            image.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(
                dir=image.parent, prefix=f".{image.name[:32]}.", suffix=TEMP_SUFFIX
            )
        except BaseException:
            first["Body"].close()
            raise
        try:
            try:
                self._write_parts(fd, image, key, etag, first, total)
                written = os.fstat(fd).st_size
                if written != total:
                    raise ImageError(
                        f"image {image}: wrote {written} bytes, the object has {total}"
                    )
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, image)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(image.parent)
        sidecar = json.dumps({"etag": etag, "size": total}).encode()
        write_atomic(_sidecar_path(image), sidecar, temp_suffix=TEMP_SUFFIX)
        seconds = time.monotonic() - started
        log.info(
            "image downloaded path=%s size=%.1fMB seconds=%.1f",
            image,
            total / MIB,
            seconds,
        )

    def _write_parts(
        self, fd: int, image: Path, key: str, etag: str, first: Any, total: int
    ) -> None:
        """The first response's body here, the other ranges in a pool of workers."""
        head = int(first["ContentLength"])
        ranges = [
            (start, min(start + self.part_size, total))
            for start in range(head, total, self.part_size)
        ]
        progress = _Progress(image, total, self.progress_every)
        stop = threading.Event()
        if not ranges:
            _copy(fd, first["Body"], 0, head, progress, stop, image)
            return
        workers = min(self.part_workers, len(ranges))
        with ThreadPoolExecutor(workers, thread_name_prefix="image-part") as pool:
            futures = [
                pool.submit(
                    self._fetch_part, fd, image, key, etag, start, end, progress, stop
                )
                for start, end in ranges
            ]
            try:
                _copy(fd, first["Body"], 0, head, progress, stop, image)
                for future in futures:
                    future.result()
            except BaseException:
                stop.set()  # parts still running give up at their next read
                pool.shutdown(wait=True, cancel_futures=True)
                raise

    def _fetch_part(
        self,
        fd: int,
        image: Path,
        key: str,
        etag: str,
        start: int,
        end: int,
        progress: _Progress,
        stop: threading.Event,
    ) -> None:
        if stop.is_set():
            return
        try:
            self._fetch_range(fd, image, key, etag, (start, end), progress, stop)
        except BaseException:
            stop.set()  # the others, the first body included, stop early
            raise

    def _fetch_range(
        self,
        fd: int,
        image: Path,
        key: str,
        etag: str,
        span: tuple[int, int],
        progress: _Progress,
        stop: threading.Event,
    ) -> None:
        start, end = span
        try:
            response = self.client.get_object(
                Bucket=self.bucket,
                Key=key,
                Range=f"bytes={start}-{end - 1}",
                IfMatch=etag,
            )
            if int(response["ContentLength"]) != end - start:
                raise ImageError(
                    f"image {image}: bytes {start}-{end - 1} of {key} came back "
                    f"with {response['ContentLength']} bytes"
                )
            _copy(fd, response["Body"], start, end - start, progress, stop, image)
        except ClientError as exc:
            if error_code(exc) == "PreconditionFailed" or http_status(exc) == 412:
                raise ImageError(
                    f"image {image}: {key} changed in bucket {self.bucket} "
                    "during the download"
                ) from None
            raise self._client_error(image, key, exc) from None
        except BotoCoreError as exc:
            raise self._fetch_error(image, key, scrub(exc, self._secret)) from None

    def _client_error(self, image: Path, key: str, exc: ClientError) -> ImageError:
        code = error_code(exc) or str(http_status(exc))
        if http_status(exc) in (401, 403):
            return self._fetch_error(image, key, f"access denied ({code})")
        return self._fetch_error(image, key, f"{code} {scrub(exc, self._secret)}")

    def _fetch_error(self, image: Path, key: str, reason: str) -> ImageError:
        return ImageError(f"image {image}: fetching {key} from {self.bucket}: {reason}")


def _copy(
    fd: int,
    body: Any,
    offset: int,
    length: int,
    progress: _Progress,
    stop: threading.Event,
    image: Path,
) -> None:
    """``length`` bytes of a response body into ``fd`` at ``offset``."""
    end = offset + length
    position = offset
    try:
        while position < end and not stop.is_set():
            chunk = body.read(min(READ_SIZE, end - position))
            if not chunk:
                break
            _pwrite_all(fd, chunk, position)
            position += len(chunk)
            progress.add(len(chunk))
    finally:
        body.close()
    if position != end and not stop.is_set():
        raise ImageError(
            f"image {image}: the body ended after {position - offset} of "
            f"{length} bytes at offset {offset}"
        )


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _total_size(response: Any) -> int:
    """The object's size: after the slash of Content-Range, else the whole body."""
    content_range = str(response.get("ContentRange") or "")
    _, slash, total = content_range.rpartition("/")
    if slash and total.isdigit():
        return int(total)
    return int(response["ContentLength"])


def _sidecar_path(image: Path) -> Path:
    return image.with_name(image.name + SIDECAR_SUFFIX)


def _read_local(image: Path) -> _Local:
    """Whether ``image`` exists, and its sidecar's ETag when the sizes agree."""
    try:
        size = image.stat().st_size
    except FileNotFoundError:
        return _Local(exists=False, etag=None)
    try:
        with open(_sidecar_path(image), "rb") as handle:
            recorded = json.loads(handle.read(MAX_SIDECAR_BYTES))
        etag, recorded_size = recorded["etag"], recorded["size"]
    except (OSError, ValueError, TypeError, KeyError):
        return _Local(exists=True, etag=None)
    if not isinstance(etag, str) or recorded_size != size:
        return _Local(exists=True, etag=None)
    return _Local(exists=True, etag=etag)


def _fsync_dir(directory: Path) -> None:
    # without this the rename itself may be lost on power failure
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
