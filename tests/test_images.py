"""Image sync against a real S3 server (SeaweedFS): what is sent, what lands on disk."""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from nodeagent.config import parse_agent_config
from nodeagent.images import ImageError, ImageSync
from tests.conftest import S3Bucket

PART = 64 * 1024
BIG = 3 * PART + 123  # four ranged GETs


@dataclass
class Requests:
    """Every GetObject a client sends: its conditional headers and the answer."""

    sent: list[dict[str, str]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def watch(self, client: Any) -> Requests:
        client.meta.events.register("before-send.s3.GetObject", self._before_send)
        client.meta.events.register("after-call.s3.GetObject", self._after_call)
        return self

    def _before_send(self, request: Any, **_: Any) -> None:
        headers = {
            name: request.headers[name].decode()
            if isinstance(request.headers[name], bytes)
            else request.headers[name]
            for name in ("If-None-Match", "If-Match", "Range")
            if name in request.headers
        }
        with self.lock:
            self.sent.append(headers)

    def _after_call(self, http_response: Any, **_: Any) -> None:
        with self.lock:
            self.statuses.append(http_response.status_code)

    @property
    def first_parts(self) -> list[dict[str, str]]:
        """The opening request of each sync of a file (range from byte 0)."""
        return [h for h in self.sent if h.get("Range", "").startswith("bytes=0-")]

    def clear(self) -> None:
        self.sent.clear()
        self.statuses.clear()


def image_sync(bucket: S3Bucket, images: Path, **options: Any) -> ImageSync:
    server = bucket.server
    settings: dict[str, Any] = {
        "region": server.region,
        "endpoint_url": server.endpoint_url,
        "access_key": server.access_key,
        "secret_key": server.secret_key,
        "part_size": PART,
        "part_workers": 3,
    }
    return ImageSync(bucket.name, images, **(settings | options))


def put(bucket: S3Bucket, key: str, data: bytes) -> str:
    response = bucket.server.admin.put_object(Bucket=bucket.name, Key=key, Body=data)
    return str(response["ETag"])


def sidecar(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.with_name(path.name + ".etag").read_text())
    return loaded


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*.part"))


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return tmp_path / "images"


def test_first_sync_downloads_images_and_records_their_etags(
    s3_bucket: S3Bucket, images: Path
) -> None:
    rootfs, kernel = os.urandom(BIG), os.urandom(1000)
    rootfs_etag = put(s3_bucket, "web/rootfs.ext4", rootfs)
    kernel_etag = put(s3_bucket, "vmlinux-6.1", kernel)
    sync = image_sync(s3_bucket, images)
    requests = Requests().watch(sync.client)

    paths = [str(images / "web/rootfs.ext4"), str(images / "vmlinux-6.1")]
    assert sync.sync(paths) == dict.fromkeys(paths)

    assert (images / "web/rootfs.ext4").read_bytes() == rootfs
    assert (images / "vmlinux-6.1").read_bytes() == kernel
    assert sidecar(images / "web/rootfs.ext4") == {"etag": rootfs_etag, "size": BIG}
    assert sidecar(images / "vmlinux-6.1") == {"etag": kernel_etag, "size": 1000}
    assert leftovers(images) == []
    # nothing on disk yet: no conditional header; the rootfs came in 4 ranges
    assert all("If-None-Match" not in h for h in requests.sent)
    assert sorted(requests.statuses) == [206] * 5
    parts = [h for h in requests.sent if "If-Match" in h]
    assert len(parts) == 3
    assert {h["If-Match"] for h in parts} == {rootfs_etag}


def test_unchanged_image_costs_one_304_and_is_not_rewritten(
    s3_bucket: S3Bucket, images: Path
) -> None:
    etag = put(s3_bucket, "web/rootfs.ext4", os.urandom(BIG))
    sync = image_sync(s3_bucket, images)
    path = images / "web/rootfs.ext4"
    assert sync.sync([str(path)]) == {str(path): None}
    before = path.stat()
    requests = Requests().watch(sync.client)

    assert sync.sync([str(path)]) == {str(path): None}

    assert requests.statuses == [304]
    assert requests.sent[0]["If-None-Match"] == etag
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_changed_object_is_downloaded_again(s3_bucket: S3Bucket, images: Path) -> None:
    old_etag = put(s3_bucket, "vmlinux", b"old kernel")
    sync = image_sync(s3_bucket, images)
    path = images / "vmlinux"
    sync.sync([str(path)])
    new = os.urandom(BIG)
    new_etag = put(s3_bucket, "vmlinux", new)
    requests = Requests().watch(sync.client)

    assert sync.sync([str(path)]) == {str(path): None}

    assert path.read_bytes() == new
    assert sidecar(path) == {"etag": new_etag, "size": BIG}
    assert requests.sent[0]["If-None-Match"] == old_etag
    assert requests.statuses == [206] * 4


def truncate(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.truncate(100)


def delete(path: Path) -> None:
    path.unlink()


def drop_sidecar(path: Path) -> None:
    path.with_name(path.name + ".etag").unlink()


def garble_sidecar(path: Path) -> None:
    path.with_name(path.name + ".etag").write_text("{not json")


@pytest.mark.parametrize(
    "damage", [truncate, delete, drop_sidecar, garble_sidecar], ids=lambda f: f.__name__
)
def test_damaged_local_state_means_an_unconditional_download(
    s3_bucket: S3Bucket, images: Path, damage: Any
) -> None:
    data = os.urandom(BIG)
    etag = put(s3_bucket, "rootfs.ext4", data)
    sync = image_sync(s3_bucket, images)
    path = images / "rootfs.ext4"
    sync.sync([str(path)])
    damage(path)
    requests = Requests().watch(sync.client)

    assert sync.sync([str(path)]) == {str(path): None}

    assert "If-None-Match" not in requests.sent[0]
    assert requests.statuses == [206] * 4
    assert path.read_bytes() == data
    assert sidecar(path) == {"etag": etag, "size": BIG}


def test_image_missing_everywhere_fails_alone(
    s3_bucket: S3Bucket, images: Path
) -> None:
    put(s3_bucket, "vmlinux", b"kernel")
    sync = image_sync(s3_bucket, images)
    missing, kernel = str(images / "gone.ext4"), str(images / "vmlinux")

    result = sync.sync([missing, kernel])

    assert result == {
        missing: f"image {missing}: not in bucket {s3_bucket.name} and not on disk",
        kernel: None,
    }
    assert (images / "vmlinux").read_bytes() == b"kernel"
    assert not (images / "gone.ext4").exists()


def test_local_image_missing_from_the_bucket_is_used(
    s3_bucket: S3Bucket, images: Path, caplog: pytest.LogCaptureFixture
) -> None:
    images.mkdir()
    (images / "local.ext4").write_bytes(b"built here")
    sync = image_sync(s3_bucket, images)
    caplog.set_level(logging.INFO, logger="nodeagent.images")

    assert sync.sync([str(images / "local.ext4")]) == {str(images / "local.ext4"): None}

    assert (images / "local.ext4").read_bytes() == b"built here"
    assert "image not in bucket, using the local file" in caplog.text


def test_a_path_shared_by_services_is_fetched_once(
    s3_bucket: S3Bucket, images: Path
) -> None:
    put(s3_bucket, "vmlinux", os.urandom(BIG))
    sync = image_sync(s3_bucket, images, parallelism=4)
    requests = Requests().watch(sync.client)
    kernel = str(images / "vmlinux")

    assert sync.sync([kernel, kernel, kernel]) == {kernel: None}

    assert len(requests.first_parts) == 1
    assert requests.statuses == [206] * 4


def test_two_threads_syncing_one_path_download_it_once(
    s3_bucket: S3Bucket, images: Path
) -> None:
    put(s3_bucket, "rootfs.ext4", os.urandom(BIG))
    sync = image_sync(s3_bucket, images)
    requests = Requests().watch(sync.client)
    path = str(images / "rootfs.ext4")
    start = threading.Barrier(2)
    results: list[dict[str, str | None]] = []

    def run() -> None:
        start.wait()
        results.append(sync.sync([path]))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results == [{path: None}] * 2
    # the second waited for the first, then found its download current
    assert sorted(requests.statuses) == [206] * 4 + [304]
    assert len(requests.first_parts) == 2


def test_object_replaced_during_download_keeps_the_old_image(
    s3_bucket: S3Bucket, images: Path
) -> None:
    put(s3_bucket, "rootfs.ext4", b"version 1")
    sync = image_sync(s3_bucket, images)
    path = images / "rootfs.ext4"
    sync.sync([str(path)])
    old_sidecar = sidecar(path)
    put(s3_bucket, "rootfs.ext4", os.urandom(BIG))
    replaced = threading.Event()

    def replace_after_first_part(**_: Any) -> None:
        # a real race: a new upload lands once the first range has been answered
        if not replaced.is_set():
            replaced.set()
            put(s3_bucket, "rootfs.ext4", os.urandom(BIG))

    sync.client.meta.events.register(
        "after-call.s3.GetObject", replace_after_first_part
    )

    result = sync.sync([str(path)])

    assert result == {
        str(path): f"image {path}: rootfs.ext4 changed in bucket "
        f"{s3_bucket.name} during the download"
    }
    assert path.read_bytes() == b"version 1"
    assert sidecar(path) == old_sidecar
    assert leftovers(images) == []


def test_empty_object_is_downloaded(s3_bucket: S3Bucket, images: Path) -> None:
    etag = put(s3_bucket, "empty.img", b"")
    sync = image_sync(s3_bucket, images)
    path = images / "empty.img"

    assert sync.sync([str(path)]) == {str(path): None}
    assert path.read_bytes() == b""
    assert sidecar(path) == {"etag": etag, "size": 0}
    assert sync.sync([str(path)]) == {str(path): None}


def test_outside_images_dir_is_only_checked_on_disk(
    s3_bucket: S3Bucket, images: Path, tmp_path: Path
) -> None:
    present = tmp_path / "elsewhere.ext4"
    present.write_bytes(b"local")
    missing = str(tmp_path / "absent.ext4")
    sync = image_sync(s3_bucket, images)
    requests = Requests().watch(sync.client)

    assert sync.sync([str(present), missing]) == {
        str(present): None,
        missing: f"image {missing}: not on disk, and outside images_dir {images} "
        "so not fetched",
    }
    assert requests.sent == []


def test_paths_escaping_images_dir_are_refused(
    s3_bucket: S3Bucket, images: Path, tmp_path: Path
) -> None:
    put(s3_bucket, "secret", b"x")
    images.mkdir()
    (tmp_path / "outside").mkdir()
    (images / "link").symlink_to(tmp_path / "outside")
    sync = image_sync(s3_bucket, images)
    dotdot = f"{images}/web/../../secret"
    through_link = str(images / "link" / "secret")

    result = sync.sync([dotdot, through_link, "rel/x.ext4"])

    assert result == {
        dotdot: f"image {dotdot}: '..' is not allowed in an image path",
        through_link: f"image {through_link}: a symlink leads out of images_dir "
        f"{images}",
        "rel/x.ext4": "image rel/x.ext4: not an absolute path",
    }
    assert not (tmp_path / "outside" / "secret").exists()
    assert not (tmp_path / "secret").exists()


@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("/var/lib/images/vmlinux-6.1", "vmlinux-6.1"),
        ("/var/lib/images/web/rootfs.ext4", "web/rootfs.ext4"),
        ("/var/lib/images//web/./rootfs.ext4", "web/rootfs.ext4"),
        ("/srv/other/rootfs.ext4", None),
        ("/var/lib/images-old/rootfs.ext4", None),
    ],
)
def test_key_is_the_path_relative_to_images_dir(path: str, key: str | None) -> None:
    sync = ImageSync("b", "/var/lib/images", client=object())  # type: ignore[arg-type]
    assert sync.key_for(path) == key


def test_images_dir_itself_is_not_an_image() -> None:
    sync = ImageSync("b", "/var/lib/images", client=object())  # type: ignore[arg-type]
    with pytest.raises(ImageError, match="is images_dir itself"):
        sync.key_for("/var/lib/images/")


def test_wrong_secret_is_access_denied_without_the_secret(
    s3_bucket: S3Bucket, images: Path
) -> None:
    put(s3_bucket, "vmlinux", b"kernel")
    wrong = "wrong-secret-value-1234"
    sync = image_sync(s3_bucket, images, secret_key=wrong)
    path = str(images / "vmlinux")

    message = sync.sync([path])[path]

    assert message is not None
    assert message.startswith(
        f"image {path}: fetching vmlinux from {s3_bucket.name}: access denied ("
    )
    assert wrong not in message


def test_large_download_logs_progress(
    s3_bucket: S3Bucket, images: Path, caplog: pytest.LogCaptureFixture
) -> None:
    put(s3_bucket, "rootfs.ext4", os.urandom(BIG))
    sync = image_sync(s3_bucket, images, progress_every=PART)
    caplog.set_level(logging.INFO, logger="nodeagent.images")

    sync.sync([str(images / "rootfs.ext4")])

    progress = [m for m in caplog.messages if " done=" in m]
    # one line per PART crossed before the end; parts finish in any order, so
    # the last mark may be passed together with the end (not logged)
    assert len(progress) in (2, 3)
    assert all(m.endswith("done=0.1MB of 0.2MB") for m in progress[:2])


def test_from_config_needs_an_images_bucket(tmp_path: Path) -> None:
    base = {"store_type": "local", "store_dir": str(tmp_path)}
    config, _ = parse_agent_config(base)
    assert ImageSync.from_config(config) is None

    (tmp_path / "access").write_text("key-id\n")
    (tmp_path / "secret").write_text("secret-value\n")
    config, _ = parse_agent_config(
        base
        | {
            "s3_images_bucket": "images",
            "images_dir": str(tmp_path / "images"),
            "s3_endpoint_url": "http://127.0.0.1:1",
            "s3_access_key_file": str(tmp_path / "access"),
            "s3_secret_key_file": str(tmp_path / "secret"),
            "image_sync_parallelism": 2,
        }
    )
    sync = ImageSync.from_config(config)

    assert sync is not None
    assert (sync.bucket, sync.images_dir, sync.parallelism) == (
        "images",
        tmp_path / "images",
        2,
    )
    assert sync.client.meta.endpoint_url == "http://127.0.0.1:1"
