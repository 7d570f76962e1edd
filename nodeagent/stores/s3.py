"""A node config store in an S3 bucket, polled cheaply with ``If-None-Match``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from nodeagent.s3client import error_code, http_status, make_client, scrub
from nodeagent.stores.base import (
    MAX_CONFIG_BYTES,
    Fetched,
    StoreError,
    check_size,
    node_path,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

_NOT_FOUND = frozenset({"404", "NoSuchKey", "NoSuchBucket"})
_TRANSIENT_CODES = frozenset({"RequestTimeout", "SlowDown", "Throttling"})


class S3ConfigStore:
    """GETs ``<prefix>nodes/<label>.yaml``; the revision is the object's ETag.

    After the first fetch of a label every GET carries the ETag it returned, so
    an unchanged config costs a 304 without a body. A missing object is not
    transient: it stays missing until someone publishes the node config.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        region: str = "us-east-1",
        endpoint_url: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self._secret = secret_key or ""
        self._etags: dict[str, str] = {}
        self.client: S3Client = make_client(
            region, endpoint_url, access_key, secret_key
        )

    def fetch(self, label: str) -> Fetched:
        """The config of ``label``; unchanged when S3 answers 304."""
        key = self.prefix + node_path(label)
        where = f"s3 store {self.bucket}: {key}"
        etag = self._etags.get(label)
        request: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if etag:
            request["IfNoneMatch"] = etag
        try:
            response = self.client.get_object(**request)
            size = int(response.get("ContentLength") or 0)
            check_size(where, size)
            data = response["Body"].read(MAX_CONFIG_BYTES + 1)
        except ClientError as exc:
            if etag and error_code(exc) in ("304", "NotModified"):
                return Fetched(label, None, _revision(etag), changed=False)
            raise self._client_error(where, exc) from None
        except NoCredentialsError:
            raise StoreError(f"{where}: no credentials", transient=False) from None
        except BotoCoreError as exc:
            raise StoreError(f"{where}: {self._scrub(exc)}", transient=True) from None
        check_size(where, len(data))
        new_etag = str(response.get("ETag", ""))
        self._etags[label] = new_etag
        log.debug("config downloaded label=%s etag=%s", label, new_etag)
        return Fetched(label, data, _revision(new_etag), changed=True)

    def _client_error(self, where: str, exc: ClientError) -> StoreError:
        code = error_code(exc)
        status = http_status(exc)
        if code in _NOT_FOUND:
            return StoreError(f"{where}: not found", transient=False)
        if status in (401, 403):
            return StoreError(f"{where}: access denied ({code})", transient=False)
        transient = status >= 500 or status == 429 or code in _TRANSIENT_CODES
        return StoreError(f"{where}: {code} {self._scrub(exc)}", transient=transient)

    def _scrub(self, exc: Exception) -> str:
        return scrub(exc, self._secret)


def _revision(etag: str) -> str:
    return etag.strip('"')
