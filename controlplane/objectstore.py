"""Where node configs are published: a local directory or an S3 bucket.

Both stores speak the same small interface and the same key rules, so a layout that
works on a laptop (``LocalStore``) works unchanged on S3 (``S3Store``). Keys are
relative, ``/``-separated paths such as ``nodes/web.yaml``.

No Django here: the settings layer calls ``store_from_env`` with its environment.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from controlplane.envvars import EnvError, env_secret
from nodeagent.atomicfile import write_atomic

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

DEFAULT_LOCAL_DIR = "var/objectstore"
# A temp file of an interrupted write ends in this suffix; keys may not, so a
# leftover can never be mistaken for an object (and ``list`` skips it).
TEMP_SUFFIX = ".firework-tmp"
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_DENIED_CODES = frozenset(
    {"AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId", "403"}
)


class ObjectStoreError(Exception):
    """An object store operation failed; the message names the operation and key."""


class InvalidKey(ObjectStoreError, ValueError):
    """A key (or prefix) breaks the key rules, e.g. ``../etc`` or ``a//b``."""


class ObjectNotFound(ObjectStoreError):
    """The key does not exist in the store."""


class AccessDenied(ObjectStoreError):
    """The store refused the credentials or the operation."""


class StoreUnavailable(ObjectStoreError):
    """The store could not be reached (connection refused, timeout)."""


class StoreConfigError(ObjectStoreError, ValueError):
    """The store settings are incomplete or contradictory."""


@dataclass(frozen=True)
class StoredObject:
    """An object's content and its ETag (quoted, as S3 returns it)."""

    data: bytes
    etag: str


class ObjectStore(Protocol):
    """The operations publishing needs from a store."""

    def put(self, key: str, data: bytes, content_type: str = "application/yaml") -> str:
        """Store ``data`` under ``key``, replacing it whole; return the ETag."""
        ...

    def get(self, key: str) -> StoredObject:
        """Return the object at ``key``; raise ``ObjectNotFound`` if missing."""
        ...

    def list(self, prefix: str = "") -> list[str]:
        """Every key starting with ``prefix``, sorted."""
        ...

    def delete(self, key: str) -> None:
        """Remove ``key``; deleting a missing key is not an error (as on S3)."""
        ...

    def describe(self) -> str:
        """Where the store points, for logs; never contains credentials."""
        ...


def etag_of(data: bytes) -> str:
    """The ETag S3 gives a single-part upload: the quoted MD5 of the content."""
    digest = hashlib.md5(data, usedforsecurity=False).hexdigest()
    return f'"{digest}"'


def validate_key(key: str) -> str:
    """Return ``key`` if it is a relative path of non-empty, non-dot segments."""
    if not key:
        raise InvalidKey("invalid key: empty")
    _check_segments(key, key.split("/"))
    return key


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is ``""`` or a valid key, optionally ending in ``/``.

    A list prefix may also end mid-segment (``nodes/we``), as on S3.
    """
    if prefix:
        _check_segments(prefix, prefix.removesuffix("/").split("/"))
    return prefix


def _check_segments(key: str, segments: list[str]) -> None:
    # The same rules for both stores: on disk they keep keys inside the root, and
    # on S3 they keep a layout that could be mirrored to disk.
    if key.startswith("/"):
        raise InvalidKey(f"invalid key {key!r}: must be relative")
    if "\\" in key or "\0" in key:
        raise InvalidKey(f"invalid key {key!r}: backslash or NUL")
    for segment in segments:
        if segment in ("", ".", ".."):
            raise InvalidKey(f"invalid key {key!r}: empty, '.' or '..' segment")
        if segment.endswith(TEMP_SUFFIX):
            raise InvalidKey(f"invalid key {key!r}: reserved suffix {TEMP_SUFFIX}")


class LocalStore:
    """Objects as files under ``root``; every write is atomic (temp file + rename).

    ``content_type`` is accepted for interface parity and not stored. Like a file
    system (and unlike S3), a key cannot be both an object and a prefix of other
    keys: ``put("a")`` fails while ``a/b`` exists.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalStore({self.describe()})"

    def describe(self) -> str:
        """The store's directory."""
        return str(self.root)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def put(self, key: str, data: bytes, content_type: str = "application/yaml") -> str:
        """Write ``data`` to a temp file in the target directory, then rename it."""
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data, temp_suffix=TEMP_SUFFIX)
        except OSError as exc:
            raise ObjectStoreError(f"put {key} in {self.root}: {_reason(exc)}") from exc
        return etag_of(data)

    def get(self, key: str) -> StoredObject:
        """Read the whole file; a missing file (or a directory) is not found."""
        path = self._path(key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFound(f"get {key} in {self.root}: not found") from exc
        except OSError as exc:
            raise ObjectStoreError(f"get {key} in {self.root}: {_reason(exc)}") from exc
        return StoredObject(data=data, etag=etag_of(data))

    def list(self, prefix: str = "") -> list[str]:
        """Walk the directory holding ``prefix`` and keep the keys that match."""
        validate_prefix(prefix)
        # Only the part up to the last "/" names a directory; the rest filters.
        start = self.root.joinpath(*prefix.split("/")[:-1])
        keys: list[str] = []
        for dirpath, _dirs, files in os.walk(start):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in files:
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix) and not name.endswith(TEMP_SUFFIX):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        """Remove the file; empty directories are left in place."""
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except IsADirectoryError:
            return  # a prefix of other keys, not an object: nothing to delete
        except OSError as exc:
            raise ObjectStoreError(
                f"delete {key} in {self.root}: {_reason(exc)}"
            ) from exc


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


class S3Store:
    """Objects in an S3 bucket under ``prefix``.

    ``prefix`` is normalised: ``"firework"`` becomes ``"firework/"``; it must
    otherwise follow the key rules. Without ``access_key``/``secret_key`` boto3's
    default credential chain applies. ``page_size`` bounds each list request.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        region: str | None = None,
        endpoint_url: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        client: S3Client | None = None,
        *,
        page_size: int = 1000,
        max_attempts: int = 3,
    ) -> None:
        if not bucket:
            raise StoreConfigError("s3 store: bucket name is empty")
        if (access_key is None) != (secret_key is None):
            raise StoreConfigError("s3 store: give both access key and secret key")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        self.bucket = bucket
        self.prefix = validate_prefix(prefix)
        self.page_size = page_size
        self._endpoint = _public_endpoint(endpoint_url)
        self._client = client or _make_client(
            region, endpoint_url, access_key, secret_key, max_attempts
        )

    def __repr__(self) -> str:
        return f"S3Store({self.describe()})"

    def describe(self) -> str:
        """``s3://bucket/prefix/``, plus the endpoint host when one is set."""
        where = f"s3://{self.bucket}/{self.prefix}"
        return f"{where} at {self._endpoint}" if self._endpoint else where

    def _location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def put(self, key: str, data: bytes, content_type: str = "application/yaml") -> str:
        """Upload in one request, so the ETag is the MD5 of ``data``."""
        full = self.prefix + validate_key(key)
        try:
            response = self._client.put_object(
                Bucket=self.bucket, Key=full, Body=data, ContentType=content_type
            )
        except (BotoCoreError, ClientError) as exc:
            raise _wrap("put", self._location(key), exc) from exc
        return response["ETag"]

    def get(self, key: str) -> StoredObject:
        """Download the whole object."""
        full = self.prefix + validate_key(key)
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=full)
            data = response["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            raise _wrap("get", self._location(key), exc) from exc
        return StoredObject(data=data, etag=response["ETag"])

    def list(self, prefix: str = "") -> list[str]:
        """Follow every page of ListObjectsV2; keys come back without our prefix."""
        full = self.prefix + validate_prefix(prefix)
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket,
            Prefix=full,
            PaginationConfig={"PageSize": self.page_size},
        )
        keys: list[str] = []
        try:
            for page in pages:
                keys.extend(obj["Key"] for obj in page.get("Contents", []))
        except (BotoCoreError, ClientError) as exc:
            raise _wrap("list", self._location(prefix), exc) from exc
        return sorted(key.removeprefix(self.prefix) for key in keys)

    def delete(self, key: str) -> None:
        """Delete one object; S3 treats a missing key as success."""
        full = self.prefix + validate_key(key)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=full)
        except (BotoCoreError, ClientError) as exc:
            raise _wrap("delete", self._location(key), exc) from exc


def _make_client(
    region: str | None,
    endpoint_url: str | None,
    access_key: str | None,
    secret_key: str | None,
    max_attempts: int,
) -> S3Client:
    config = Config(
        retries={"mode": "standard", "max_attempts": max_attempts},
        connect_timeout=5,
        read_timeout=30,
        signature_version="s3v4",
        # S3-compatible servers (MinIO, SeaweedFS) rarely resolve bucket subdomains.
        s3={"addressing_style": "path" if endpoint_url else "auto"},
    )
    # A session per store keeps boto3's module-level default session untouched.
    session = boto3.session.Session()
    return session.client(
        "s3",
        region_name=region,
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=config,
    )


def _public_endpoint(endpoint_url: str | None) -> str:
    """The endpoint without any ``user:password@`` part, for messages and logs."""
    if not endpoint_url:
        return ""
    parts = urlsplit(endpoint_url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


def _wrap(
    operation: str, location: str, exc: BotoCoreError | ClientError
) -> ObjectStoreError:
    """Turn a boto error into our error type, naming the operation and the key."""
    if isinstance(exc, NoCredentialsError):
        return AccessDenied(f"{operation} {location}: no credentials found")
    if isinstance(exc, BotoCoreError):
        return StoreUnavailable(f"{operation} {location}: {exc}")
    error = exc.response.get("Error", {})
    code = str(error.get("Code", "")) or str(
        exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
    )
    message = error.get("Message", "") or code
    if code in _NOT_FOUND_CODES:
        return ObjectNotFound(f"{operation} {location}: not found")
    if code in _DENIED_CODES:
        return AccessDenied(f"{operation} {location}: access denied ({code})")
    return ObjectStoreError(f"{operation} {location}: {code}: {message}")


def store_from_env(environ: Mapping[str, str]) -> ObjectStore:
    """Build the store named by ``FIREWORK_STORE`` (``local`` or ``s3``).

    Raises ``StoreConfigError`` naming the variable when the settings are unusable;
    ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` may come from ``*_FILE`` files.
    An empty variable counts as unset.
    """
    kind = _env(environ, "FIREWORK_STORE").lower() or "local"
    if kind == "local":
        return LocalStore(
            Path(_env(environ, "FIREWORK_STORE_DIR") or DEFAULT_LOCAL_DIR)
        )
    if kind != "s3":
        raise StoreConfigError(f"FIREWORK_STORE: must be local or s3 (got {kind!r})")
    bucket = _env(environ, "S3_BUCKET")
    if not bucket:
        raise StoreConfigError("S3_BUCKET: required when FIREWORK_STORE=s3")
    access_key = secret_from_env(environ, "AWS_ACCESS_KEY_ID")
    secret_key = secret_from_env(environ, "AWS_SECRET_ACCESS_KEY")
    if (access_key is None) != (secret_key is None):
        raise StoreConfigError(
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY: set both or neither"
        )
    store = S3Store(
        bucket,
        prefix=_env(environ, "S3_PREFIX"),
        region=_env(environ, "S3_REGION") or None,
        endpoint_url=_env(environ, "S3_ENDPOINT_URL") or None,
        # Neither set: boto3's default chain (env, profile, instance role) applies.
        access_key=access_key,
        secret_key=secret_key,
    )
    log.info("object store configured store=%s", store.describe())
    return store


def _env(environ: Mapping[str, str], name: str) -> str:
    return environ.get(name, "").strip()


def secret_from_env(environ: Mapping[str, str], name: str) -> str | None:
    """``name`` from the environment or the file named by ``<name>_FILE``, or None.

    Messages name the variable and the file, never the secret.
    """
    try:
        return env_secret(name, environ=environ) or None
    except EnvError as exc:
        raise StoreConfigError(str(exc)) from None
