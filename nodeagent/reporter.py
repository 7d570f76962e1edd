"""Reports the agent's status to the control plane, from a thread of its own.

The agent calls :meth:`Reporter.notify` after each tick; the reporter sends the
``/status`` document soon after, and at least every ``heartbeat_interval``. The
control plane being down or refusing the node changes nothing on the node: the
failure is logged (one warning per outage, one error per kind of refusal, then
debug) and retried with backoff.

The node token comes from ``control_plane_token_file``; without one the node
enrolls first, trading the operator's one-time enrollment token for a node token
that it keeps in that file (mode 0600; ``state_dir/control-plane-token`` when
the key is unset). No token ever reaches a log line or an exception message.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from nodeagent import __version__
from nodeagent.atomicfile import write_atomic
from nodeagent.config import AgentConfig
from nodeagent.durations import parse_duration
from nodeagent.httpapi import status_document
from nodeagent.status import AgentStatus
from nodeagent.stores.base import StoreError
from nodeagent.stores.factory import read_secret_file

log = logging.getLogger(__name__)

MAX_DOCUMENT_BYTES = 256 * 1024
MAX_TEXT_BYTES = 1024  # each last_error and stale_reason
MAX_ANSWER_BYTES = 64 * 1024  # what we read of the control plane's answers
MAX_DETAIL_CHARS = 200
TIMEOUT = httpx.Timeout(10.0, connect=5.0)
TOTAL_SECONDS = 10.0  # httpx bounds each phase; this also bounds reading answers
STOP_JOIN_SECONDS = 1.0
USER_AGENT = f"firework-agent/{__version__}"
CREDENTIAL_FILE = "control-plane-token"  # in state_dir, if no file is set
# what may appear in an HTTP header value; anything else is refused before use
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")
# answers that mean "try again later" rather than "you are wrong"
_TRANSIENT_CODES = frozenset({408, 425, 429})
_REASONS = {400: "document rejected", 401: "token rejected", 413: "too large"}


@dataclass(frozen=True)
class ReportOutcome:
    """What one attempt did: when (reporter clock), result, and the next retry."""

    at: float
    ok: bool
    status_code: int | None = None
    error: str = ""
    retry_in: float | None = None  # seconds until the retry; None after success


@dataclass(frozen=True)
class Backoff:
    """Delay before retrying: ``initial`` doubling up to ``cap``, then ± ``jitter``.

    The jitter applies to the capped value too, so nodes that lost the control
    plane at the same moment do not come back in step.
    """

    initial: float = 1.0
    cap: float = 60.0
    jitter: float = 0.2

    def delay(self, failures: int, rng: random.Random) -> float:
        """Seconds to wait after ``failures`` failed attempts in a row (>= 1)."""
        exponent = min(max(failures, 1) - 1, 64)
        seconds = min(self.initial * 2.0**exponent, self.cap)
        return seconds * rng.uniform(1.0 - self.jitter, 1.0 + self.jitter)

    def capped(self, rng: random.Random) -> float:
        """The slow pace for failures that only an operator can fix."""
        return self.delay(65, rng)


class ReportError(Exception):
    """One report or enrollment failed; ``transient`` ones back off exponentially.

    ``kind`` is a stable reason code (``unreachable``, ``http_401`` ...), used to
    log each kind of failure once per outage.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        transient: bool = False,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.transient = transient
        self.status_code = status_code


def host_facts() -> dict[str, Any]:
    """What the control plane shows about the host: name, kernel, CPUs, memory."""
    return {
        "hostname": socket.gethostname(),
        "kernel": os.uname().release,
        "cpus": os.cpu_count() or 0,
        "memory_mb": _memory_mb(),
    }


def _memory_mb(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    try:
        text = meminfo.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    match = re.search(r"^MemTotal:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(match.group(1)) // 1024 if match else None


def _encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def _clip(text: str, limit: int = MAX_TEXT_BYTES) -> str:
    """``text`` cut to ``limit`` UTF-8 bytes, never in the middle of a character."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[:limit].decode(errors="ignore")


def _clip_service(service: dict[str, Any]) -> dict[str, Any]:
    health = service["health"]
    health = {**health, "last_error": _clip(health["last_error"])}
    return {**service, "last_error": _clip(service["last_error"]), "health": health}


def bounded_document(
    document: dict[str, Any], limit: int = MAX_DOCUMENT_BYTES
) -> dict[str, Any]:
    """``document`` with long texts clipped and, if needed, the tail of services cut.

    A cut document says ``"truncated": true``; services are kept in their order
    (by name) as long as they fit within ``limit`` bytes of JSON.
    """
    services = [_clip_service(s) for s in document["services"]]
    bounded = {
        **document,
        "stale_reason": _clip(document["stale_reason"]),
        "services": services,
    }
    if len(_encode(bounded)) <= limit:
        return bounded
    bounded = {**bounded, "services": [], "truncated": True}
    room = limit - len(_encode(bounded))
    kept = 0
    for service in services:
        room -= len(_encode(service)) + 1  # the comma that joins it
        if room < 0:
            break
        kept += 1
    bounded["services"] = services[:kept]
    if len(_encode(bounded)) > limit:
        message = f"status document larger than {limit} bytes without any service"
        raise ReportError(message, kind="too_large")
    return bounded


def read_token(key: str, path: Path) -> str | None:
    """The token in ``path``; ``None`` if the file is missing or empty."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        message = f"{key}: cannot read {path}: {reason}"
        raise ReportError(message, kind="token_file") from None
    return token or None


def write_token(path: Path, token: str) -> None:
    """Store ``token`` in ``path`` atomically, readable by the owner only.

    ``write_atomic`` writes through a ``mkstemp`` file, which is created 0600,
    so the token is never readable by others, not even before the rename.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, f"{token}\n".encode())
    os.chmod(path, 0o600)


def _usable(key: str, token: str) -> str:
    if not _TOKEN_CHARS.fullmatch(token):
        message = f"{key}: the token has characters not allowed in an HTTP header"
        raise ReportError(message, kind="bad_token")
    return token


def _scrub(text: str, secrets: tuple[str | None, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text


def _detail(body: bytes, secrets: tuple[str, ...]) -> str:
    """The ``detail`` of a JSON error answer, short, on one line, without secrets."""
    try:
        detail = json.loads(body).get("detail", "")
    except (ValueError, AttributeError):
        return ""
    # scrubbed before it is cut, so that no piece of a secret is left either
    return _scrub(" ".join(str(detail).split()), secrets)[:MAX_DETAIL_CHARS]


def _answer_error(what: str, code: int, body: bytes, *secrets: str) -> ReportError:
    transient = code >= 500 or code in _TRANSIENT_CODES
    reason = "control plane error" if code >= 500 else _REASONS.get(code, "refused")
    message = f"{what}: HTTP {code} {reason}"
    detail = _detail(body, secrets)
    if detail:
        message = f"{message}: {detail}"
    kind = "unreachable" if transient else f"http_{code}"
    return ReportError(message, kind=kind, transient=transient, status_code=code)


class Reporter:
    """Sends the node's status to the control plane; never blocks the agent."""

    def __init__(
        self,
        config: AgentConfig,
        status: AgentStatus,
        *,
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        if config.control_plane_url is None:
            raise ValueError("control_plane_url: not set, nothing to report to")
        self.status = status
        self.node = config.node_name
        self.base_url = f"{config.control_plane_url}/api/v1/nodes/{config.node_name}"
        self.token_path = Path(
            config.control_plane_token_file or Path(config.state_dir) / CREDENTIAL_FILE
        )
        enrollment = config.control_plane_enrollment_token_file
        self.enrollment_path = Path(enrollment) if enrollment else None
        self.heartbeat = parse_duration(config.heartbeat_interval)
        self.backoff = backoff or Backoff()
        self.host = host_facts()
        self._owns_client = client is None
        self._client = client or httpx.Client(timeout=TIMEOUT)
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._token: str | None = None
        # scheduling, under _lock: the first report goes out at start
        self._pending = True
        self._not_before = 0.0
        self._heartbeat_due = 0.0
        self._last: ReportOutcome | None = None
        # the reporter thread's own bookkeeping of the current outage
        self._failures = 0
        self._outage_since: float | None = None
        self._logged: set[str] = set()

    @classmethod
    def from_config(cls, config: AgentConfig, status: AgentStatus) -> Reporter | None:
        """A reporter when ``control_plane_url`` is set, else ``None``."""
        if config.control_plane_url is None:
            return None
        return cls(config, status)

    # -- what the agent calls

    def start(self) -> None:
        """Start reporting in a background thread (once)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="reporter", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, waiting at most ``STOP_JOIN_SECONDS``.

        A wait between attempts ends at once. A request in flight cannot be
        interrupted: the daemon thread then finishes it (within the HTTP
        timeouts) on its own and exits.
        """
        self._stopping.set()
        self._wake.set()
        if self._thread is None:
            if self._owns_client:
                self._client.close()
            return
        self._thread.join(STOP_JOIN_SECONDS)
        if self._thread.is_alive():
            log.debug("reporter stopping with a request in flight node=%s", self.node)

    def notify(self) -> None:
        """Ask for a report soon; calls before it goes out are coalesced."""
        with self._lock:
            self._pending = True
        self._wake.set()

    @property
    def last(self) -> ReportOutcome | None:
        """The outcome of the latest attempt, ``None`` before the first."""
        with self._lock:
            return self._last

    # -- the thread

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                wait = self._due() - self._clock()
                if wait > 0:
                    self._wake.wait(wait)
                    self._wake.clear()
                    continue
                self._attempt()
        finally:
            if self._owns_client:
                self._client.close()

    def _due(self) -> float:
        """When the next attempt may start: backoff always wins over notify()."""
        with self._lock:
            if self._pending:
                return self._not_before
            return max(self._not_before, self._heartbeat_due)

    def _attempt(self) -> None:
        with self._lock:
            self._pending = False
        started = self._clock()
        try:
            code = self._report()
        except ReportError as exc:
            self._failed(exc, started)
        except Exception as exc:  # the reporter must outlive any bug of its own
            log.exception("status report failed unexpectedly node=%s", self.node)
            error = f"internal error: {type(exc).__name__}"
            self._failed(ReportError(error, kind="internal"), started)
        else:
            self._succeeded(started, code)

    def _succeeded(self, started: float, code: int) -> None:
        now = self._clock()
        with self._lock:
            first, self._last = self._last is None, ReportOutcome(started, True, code)
            self._not_before = now
            self._heartbeat_due = now + self.heartbeat
        if self._outage_since is not None:
            message = "control plane reachable again node=%s down_for=%.0fs failures=%d"
            down = started - self._outage_since
            log.info(message, self.node, down, self._failures)
        elif first:
            log.info("reporting status to the control plane node=%s", self.node)
        self._failures = 0
        self._outage_since = None
        self._logged.clear()

    def _failed(self, exc: ReportError, started: float) -> None:
        self._failures += 1
        if exc.transient:
            delay = self.backoff.delay(self._failures, self._rng)
        else:
            delay = self.backoff.capped(self._rng)
        outcome = ReportOutcome(started, False, exc.status_code, str(exc), delay)
        now = self._clock()
        with self._lock:
            self._not_before = self._heartbeat_due = now + delay
            self._last = outcome
        if self._outage_since is None:
            self._outage_since = started
        if exc.kind in self._logged:
            level = logging.DEBUG
        else:
            level = logging.WARNING if exc.transient else logging.ERROR
            self._logged.add(exc.kind)
        message = "status report failed node=%s error=%s retry_in=%.1fs"
        log.log(level, message, self.node, exc, delay)

    # -- one attempt

    def _report(self) -> int:
        """Send one status document; returns the HTTP status of the answer."""
        token = self._node_token()
        document = {
            **status_document(self.status.snapshot()),
            "agent_version": __version__,
            "host": self.host,
        }
        body = _encode(bounded_document(document))
        code, answer = self._post("status", body, token=token)
        if 200 <= code < 300:
            return code
        if code == 401:
            # maybe the operator replaces the file: read it again next time
            self._token = None
        raise _answer_error("status report", code, answer, token)

    def _node_token(self) -> str:
        if self._token is not None:
            return self._token
        key = "control_plane_token_file"
        token = read_token(key, self.token_path)
        if token is None:
            if self.enrollment_path is None:
                message = (
                    f"{key}: {self.token_path} is missing or empty and "
                    "control_plane_enrollment_token_file is not set"
                )
                raise ReportError(message, kind="no_token")
            token = self._enroll(self.enrollment_path)
            self._keep(token)
        self._token = _usable(key, token)
        return self._token

    def _keep(self, token: str) -> None:
        """Save a new node token; if that fails it still serves until restart."""
        try:
            write_token(self.token_path, token)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            log.error("node token not saved path=%s: %s", self.token_path, reason)
            return
        log.info("enrolled node=%s token_file=%s", self.node, self.token_path)

    def _enroll(self, path: Path) -> str:
        key = "control_plane_enrollment_token_file"
        try:
            secret = read_secret_file(key, str(path))
        except StoreError as exc:
            raise ReportError(str(exc), kind="enrollment_file") from None
        assert secret is not None  # a path was given
        body = _encode({"enrollment_token": _usable(key, secret)})
        code, answer = self._post("enroll", body, token=None, secret=secret)
        if not 200 <= code < 300:
            raise _answer_error("enrollment", code, answer, secret)
        try:
            token = json.loads(answer)["token"]
        except (ValueError, KeyError, TypeError):
            token = None
        if not isinstance(token, str) or not _TOKEN_CHARS.fullmatch(token):
            message = "enrollment: the answer has no usable token"
            raise ReportError(message, kind="enrollment_answer")
        return token

    def _post(
        self, endpoint: str, body: bytes, *, token: str | None, secret: str = ""
    ) -> tuple[int, bytes]:
        """POST ``body``; the answer is read up to a cap and within the deadline."""
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        what = "enrollment" if endpoint == "enroll" else "status report"
        deadline = time.monotonic() + TOTAL_SECONDS
        url = f"{self.base_url}/{endpoint}"
        try:
            with self._client.stream(
                "POST", url, content=body, headers=headers, timeout=TIMEOUT
            ) as response:
                data = b""
                for chunk in response.iter_bytes():
                    data += chunk
                    if len(data) > MAX_ANSWER_BYTES or time.monotonic() > deadline:
                        break
                return response.status_code, data[:MAX_ANSWER_BYTES]
        except httpx.HTTPError as exc:
            reason = _scrub(str(exc) or type(exc).__name__, (token, secret))
            raise ReportError(
                f"{what}: {reason}", kind="unreachable", transient=True
            ) from None
