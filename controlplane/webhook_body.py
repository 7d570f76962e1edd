"""Reading a webhook body with a size cap, and checking its GitHub signature.

Nothing here parses the body: the size is refused before it is read, and the
signature is checked over the raw bytes while they are read, so the view only
parses a payload that is small and signed.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

# Small enough to keep the memory of one request close to the cap itself.
CHUNK_BYTES = 64 * 1024

_SIGNATURE = re.compile(r"sha256=([0-9a-fA-F]{64})")
_DIGITS = re.compile(r"[0-9]{1,20}")


class Rejected(Exception):
    """The request is refused; ``status`` is the HTTP status, the message is sent."""

    def __init__(self, status: int, message: str, *, bytes_read: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.bytes_read = bytes_read


class Readable(Protocol):
    """A binary stream: Django's request or a WSGI server's ``wsgi.input``."""

    def read(self, size: int, /) -> bytes: ...


def declared_length(meta: Mapping[str, Any], limit: int) -> int | None:
    """The body size the client announced, refused if over ``limit``.

    ``None`` means no ``Content-Length`` was sent (a chunked body, or none).
    """
    raw = meta.get("CONTENT_LENGTH")
    if raw is None or raw == "":
        return None
    text = str(raw).strip()
    # int() would also take "+1", "1_000" and non-ASCII digits.
    if _DIGITS.fullmatch(text) is None:
        raise Rejected(400, "invalid Content-Length header")
    length = int(text)
    if length > limit:
        raise Rejected(413, f"body of {length} bytes is over the limit of {limit}")
    return length


def body_stream(request_stream: Readable, meta: Mapping[str, Any]) -> Readable | None:
    """Where to read a body without ``Content-Length`` from; ``None``: no body.

    Django reads nothing past ``Content-Length``, so a chunked body is only
    readable from ``wsgi.input``, and only when the server says that stream
    ends with the body (``wsgi.input_terminated``, as gunicorn sets it).
    Otherwise reading could wait forever on the client's socket.
    """
    if meta.get("CONTENT_LENGTH") not in (None, ""):
        return request_stream
    if meta.get("wsgi.input_terminated"):
        stream: Readable = meta["wsgi.input"]
        return stream
    if meta.get("HTTP_TRANSFER_ENCODING"):
        raise Rejected(411, "this server needs a Content-Length header")
    return None


def read_capped(
    stream: Readable | None,
    *,
    length: int | None,
    limit: int,
    sink: Callable[[bytes], None],
) -> bytes:
    """Read the body in chunks, never more than ``limit`` + one chunk.

    ``length`` is the declared size (already checked against ``limit``), or
    ``None`` to read until the stream ends. Each chunk also goes to ``sink``.
    """
    if stream is None:
        return b""
    parts: list[bytes] = []
    total = 0
    remaining = limit + 1 if length is None else length
    while remaining > 0:
        chunk = stream.read(min(CHUNK_BYTES, remaining))
        if not chunk:
            break  # a short body just fails the signature check
        total += len(chunk)
        remaining -= len(chunk)
        if total > limit:
            raise Rejected(
                413, f"body is over the limit of {limit} bytes", bytes_read=total
            )
        sink(chunk)
        parts.append(chunk)
    return b"".join(parts)


def parse_signature(header: object) -> bytes:
    """The digest in ``X-Hub-Signature-256: sha256=<hex>``; 401 if absent or bad."""
    if not isinstance(header, str) or not header:
        raise Rejected(401, "missing X-Hub-Signature-256 header")
    match = _SIGNATURE.fullmatch(header.strip())
    if match is None:
        raise Rejected(401, "X-Hub-Signature-256 must be sha256=<64 hex digits>")
    return bytes.fromhex(match.group(1))


class SignatureCheck:
    """HMAC-SHA256 of the body under several secrets, computed as it is read."""

    def __init__(self, secrets: Iterable[bytes]) -> None:
        self._macs = {s: hmac.new(s, digestmod=hashlib.sha256) for s in secrets}

    def update(self, chunk: bytes) -> None:
        """Feed the next chunk of the body to every secret's HMAC."""
        for mac in self._macs.values():
            mac.update(chunk)

    def matching(self, signature: bytes) -> bytes | None:
        """The secret whose HMAC equals ``signature``, compared in constant time."""
        found = None
        # Every secret is compared, so the time taken does not tell which matched.
        for secret, mac in self._macs.items():
            if hmac.compare_digest(mac.digest(), signature):
                found = secret
        return found
