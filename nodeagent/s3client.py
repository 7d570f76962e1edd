"""The agent's boto3 S3 client and the error helpers its S3 users share."""

from __future__ import annotations

from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

CONNECT_TIMEOUT_SECONDS = 5
READ_TIMEOUT_SECONDS = 15
MIN_SCRUBBED = 8


def make_client(
    region: str = "us-east-1",
    endpoint_url: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    *,
    max_pool_connections: int = 10,
) -> S3Client:
    """A client with short timeouts, path addressing and one retry at most.

    The agent polls again on its next tick: long retry loops only delay that.
    Without keys boto3 looks for credentials the usual way (env, profile, role).
    """
    return boto3.session.Session().client(
        "s3",
        region_name=region,
        endpoint_url=endpoint_url or None,
        aws_access_key_id=access_key or None,
        aws_secret_access_key=secret_key or None,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            read_timeout=READ_TIMEOUT_SECONDS,
            retries={"mode": "standard", "max_attempts": 2},
            max_pool_connections=max_pool_connections,
        ),
    )


def error_code(exc: ClientError) -> str:
    """The S3 error code (``NoSuchKey``, ``304`` ...), empty when there is none."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def http_status(exc: ClientError) -> int:
    """The HTTP status S3 answered with, 0 when unknown."""
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def scrub(exc: Exception, secret: str) -> str:
    """The text of ``exc`` with ``secret`` masked.

    botocore's messages carry no secret, but make sure none ever leaks; a very
    short one (tests) would only mangle the text, and is no secret.
    """
    text = str(exc) or type(exc).__name__
    if len(secret) >= MIN_SCRUBBED:
        text = text.replace(secret, "***")
    return text
