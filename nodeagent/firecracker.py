"""A small client for Firecracker's HTTP API on its Unix socket.

Firecracker answers every request serially and applies it before replying, so a
``204`` means the setting is in place; errors are ``400`` with a JSON body whose
``fault_message`` (or ``error`` for transport-level problems) we keep verbatim.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
from typing import Any

log = logging.getLogger(__name__)

# Short for GETs and most PUTs; InstanceStart allocates guest memory and may be slow.
DEFAULT_TIMEOUT = 2.0
START_TIMEOUT = 10.0


class FirecrackerAPIError(Exception):
    """A request Firecracker refused; ``fault_message`` is its own text."""

    def __init__(self, method: str, path: str, status: int, fault_message: str):
        super().__init__(f"{method} {path}: {fault_message}")
        self.method = method
        self.path = path
        self.status = status
        self.fault_message = fault_message


class _UnixConnection(http.client.HTTPConnection):
    """An HTTP connection to a Unix socket path instead of a TCP host."""

    def __init__(self, socket_path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class FirecrackerClient:
    """Talks to one Firecracker process through its API socket."""

    def __init__(self, socket_path: str, timeout: float = DEFAULT_TIMEOUT):
        self.socket_path = socket_path
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send one request; return the decoded JSON body (None for ``204``).

        Raises FirecrackerAPIError for any other status and OSError when the
        socket cannot be reached.
        """
        conn = _UnixConnection(self.socket_path, timeout or self.timeout)
        headers = {"Accept": "application/json"}
        payload: bytes | None = None
        if body is not None:
            payload = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            status = response.status
            raw = response.read()
        finally:
            conn.close()
        log.debug("firecracker api method=%s path=%s status=%s", method, path, status)
        if status in (200, 204):
            return json.loads(raw) if raw else None
        raise FirecrackerAPIError(method, path, status, _fault_message(raw, status))

    def put(
        self, path: str, body: dict[str, Any], timeout: float | None = None
    ) -> None:
        """PUT a configuration body; any answer but ``204`` raises."""
        self.request("PUT", path, body, timeout)

    def get(self, path: str) -> Any:
        """GET a resource and return its decoded JSON."""
        return self.request("GET", path)

    def instance_info(self) -> dict[str, Any]:
        """``GET /``: id, state, vmm_version and app_name."""
        info = self.get("/")
        if not isinstance(info, dict):
            raise FirecrackerAPIError("GET", "/", 200, "instance info is not an object")
        return info

    def action(self, action_type: str, timeout: float | None = None) -> None:
        """``PUT /actions`` with the given action type."""
        self.put("/actions", {"action_type": action_type}, timeout)


def _fault_message(raw: bytes, status: int) -> str:
    """Firecracker's own message from an error body, falling back to the raw text."""
    try:
        data = json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace").strip() or f"http status {status}"
    if isinstance(data, dict):
        for key in ("fault_message", "error"):
            if isinstance(data.get(key), str):
                return str(data[key])
    return raw.decode(errors="replace").strip()
