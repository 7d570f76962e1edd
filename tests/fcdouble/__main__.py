"""Command line and HTTP server of the Firecracker double (see the package doc)."""

from __future__ import annotations

import json
import os
import re
import signal
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import IO, Any

from tests.fcdouble.guest import GuestBackend, StandInBackend
from tests.fcdouble.schema import definitions
from tests.fcdouble.vmm import Vmm

EXIT_ARGS = 153  # Firecracker's exit code for an argument parse error
EXIT_SIGHUP = 156
MAX_PAYLOAD = 51200
INSTANCE_ID = re.compile(r"[A-Za-z0-9-]{1,64}")
FLAGS_WITH_VALUE = {
    "--api-sock",
    "--id",
    "--log-path",
    "--level",
    "--metrics-path",
    # passed by the jailer (deprecated for anyone else, still accepted)
    "--start-time-us",
    "--start-time-cpu-us",
    "--parent-cpu-time-us",
}


def parse_args(argv: list[str]) -> dict[str, str]:
    """Firecracker's parser: separate value tokens, no ``=``, no duplicates."""
    args: dict[str, str] = {}
    i = 0
    while i < len(argv):
        flag = argv[i]
        if flag == "--version":
            args[flag] = ""
            i += 1
            continue
        if flag not in FLAGS_WITH_VALUE or flag in args:
            fail_args(f"Found argument '{flag}' which wasn't expected, or isn't valid")
        if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
            fail_args(f"The argument '{flag}' requires a value, but none was supplied")
        args[flag] = argv[i + 1]
        i += 2
    return args


def in_chroot(chroot: str | None, path: str) -> str:
    """The host path of ``path`` as a chrooted process would see it.

    As in a real chroot, ``..`` cannot climb above the root.
    """
    if chroot is None:
        return path
    inside = os.path.normpath(os.path.join("/", path)).lstrip("/")
    return os.path.join(chroot, inside)


def fail_args(message: str) -> None:
    """Exit like Firecracker on a bad command line."""
    print(f"Arguments parsing error: {message}", file=sys.stderr)
    sys.exit(EXIT_ARGS)


def parse_faults(text: str) -> dict[str, str]:
    """``KEY:message`` lines into a mapping."""
    faults = {}
    for line in text.splitlines():
        key, sep, message = line.partition(":")
        if sep:
            faults[key.strip()] = message.strip()
    return faults


class RequestLog:
    """Appends one JSON line per request, flushed at once for tests to read."""

    def __init__(self, path: str):
        self.file: IO[str] = open(path, "a")  # noqa: SIM115 (lives with the process)

    def record(
        self, method: str, path: str, raw: bytes, status: int, reply: Any
    ) -> None:
        """Record a request and the answer it got."""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        entry = {"method": method, "path": path, "body": body, "status": status}
        if isinstance(reply, dict) and "fault_message" in reply:
            entry["fault_message"] = reply["fault_message"]
        self.file.write(json.dumps(entry) + "\n")
        self.file.flush()


class ApiHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive; answers the way micro-http does."""

    protocol_version = "HTTP/1.1"
    server: ApiServer
    timeout = 5.0  # an idle keep-alive client must not hold the serial server

    def version_string(self) -> str:
        """The ``Server`` header Firecracker sends."""
        return "Firecracker API"

    def log_message(self, format: str, *args: Any) -> None:
        """The request log replaces the default stderr lines."""

    def do_GET(self) -> None:
        """Serve a GET."""
        self.serve("GET")

    def do_PUT(self) -> None:
        """Serve a PUT."""
        self.serve("PUT")

    def do_PATCH(self) -> None:
        """Serve a PATCH."""
        self.serve("PATCH")

    def serve(self, method: str) -> None:
        """Read the body, let the VMM answer, record both."""
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_PAYLOAD:
            message = (
                f"Request payload with size {length} is larger than the limit of"
                f" {MAX_PAYLOAD} allowed by server.\nAll previous unanswered requests"
                " will be dropped."
            )
            self.answer(400, {"error": message})
            self.close_connection = True
            return
        raw = self.rfile.read(length) if length else b""
        reply = self.server.vmm.handle(method, self.path, raw)
        self.server.log.record(method, self.path, raw, reply.status, reply.body)
        self.answer(reply.status, reply.body)

    def answer(self, status: int, body: Any) -> None:
        """A status line without a reason phrase, as micro-http writes it."""
        self.send_response(status, "")
        payload = b""
        if body is not None:
            payload = json.dumps(body).encode()
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "keep-alive")
        self.end_headers()
        self.wfile.write(payload)


class ApiServer(socketserver.UnixStreamServer):
    """One thread, one request at a time: Firecracker's API is serial too."""

    def __init__(self, path: str, vmm: Vmm, log: RequestLog):
        self.vmm = vmm
        self.log = log
        super().__init__(path, ApiHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up early is normal; anything else is a bug."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def guest_ended(code: int) -> None:
    """The VMM ends with its guest: exit 0 for a guest that ended itself.

    A guest backend that ended otherwise (QEMU killed or crashed) stands for a
    fault inside the VMM, which in Firecracker is a panic, and panics abort.
    """
    if code == 0:
        os._exit(0)
    print(f"fcdouble: guest backend ended with {code}; aborting", file=sys.stderr)
    sys.stderr.flush()
    os.abort()


def main(argv: list[str]) -> int:
    """Start the double; return only on a start-up error."""
    args = parse_args(argv)
    if "--version" in args:
        print("Firecracker v1.16.1\n")
        return 0
    instance_id = args.get("--id", "anonymous-instance")
    if not INSTANCE_ID.fullmatch(instance_id):
        # Firecracker panics on a bad id, and panics abort.
        print(f"Invalid instance ID: {instance_id}", file=sys.stderr)
        os.abort()
    if "FCDOUBLE_EXIT" in os.environ:
        return int(os.environ["FCDOUBLE_EXIT"])
    # Under the jailer double, paths are in-jail paths: see tests.fcdouble.jailer.
    chroot = os.environ.get("FCDOUBLE_CHROOT") or None
    sock = in_chroot(chroot, args.get("--api-sock", "/run/firecracker.socket"))
    try:  # the spec every request is checked against: no spec, no double
        definitions()
    except OSError as exc:
        print(f"fcdouble: cannot read the Firecracker API spec: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGHUP, lambda *_: os._exit(EXIT_SIGHUP))
    if os.environ.get("FCDOUBLE_IGNORE_SIGTERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(float(os.environ.get("FCDOUBLE_BIND_DELAY", "0")))
    log = RequestLog(os.environ.get("FCDOUBLE_LOG", f"{sock}.requests.jsonl"))

    def resolve_path(path: str) -> str:
        return in_chroot(chroot, path)

    backend: GuestBackend
    kind = os.environ.get("FCDOUBLE_BACKEND") or "standin"
    if kind == "qemu":
        from tests.fcdouble.qemu import QemuBackend  # only QEMU users pay for it

        backend = QemuBackend(resolve_path)
    elif kind == "standin":
        backend = StandInBackend(
            ignore_cad=os.environ.get("FCDOUBLE_GUEST") == "ignore-cad"
        )
    else:
        print(f"fcdouble: unknown FCDOUBLE_BACKEND {kind!r}", file=sys.stderr)
        return 2
    faults = parse_faults(os.environ.get("FCDOUBLE_FAIL", ""))
    vmm = Vmm(
        instance_id,
        backend,
        faults,
        on_guest_exit=guest_ended,
        resolve_path=resolve_path,
    )
    try:
        server = ApiServer(sock, vmm, log)
    except OSError as exc:
        print(
            f"Failed to open the API socket at: {sock}. Check that it is not already"
            f" used. ({exc})",
            file=sys.stderr,
        )
        return 1
    print(f"Listening on API socket ({sock}).", flush=True)
    # The socket is never unlinked, as with Firecracker: exits happen via os._exit.
    threading.current_thread().name = "fc_api"
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
