"""A SendGrid-compatible ``POST /v3/mail/send`` server for tests and benchmarks.

The official ``sendgrid`` library is pointed at this server instead of being mocked, so every
request the transport builds really crosses HTTP and is checked against SendGrid's own OpenAPI
description (twilio/sendgrid-oai ``tsg_mail_v3.json``) plus the documented rules the schema does
not encode. Faults (429, 5xx, slow answers, per-address rejections) can be injected to test the
retry logic. A request cut off mid-body (its client killed or gone before Content-Length bytes
arrived) is recorded in ``aborted``, not judged: it is neither accepted nor an invalid request.

Usage::

    with SendGridServer() as sg:
        client = SendGridAPIClient(api_key="SG.test", host=sg.url)
        client.send(payload)
        sg.assert_all_valid()

Validation cost of one 1000-personalization body (two List-Unsubscribe headers, one substitution
and one custom_arg each; 318 KB of JSON), Python 3.11, jsonschema 4.26, best of 5 to 9 runs on a
shared dev box: ``validate="full"`` (jsonschema over the whole body) takes 98-102 ms (up to
~170 ms under load). ``validate="rules"`` takes about 7 ms. It runs jsonschema over the
message-level fields only, checks each personalization against a hand-written copy of the item
schema, and applies the same documented rules. ``full`` is the default. Benchmarks should pass
``validate="rules"`` so that the server, which shares the benchmark's GIL, does not dominate the
measurement. ``tests/unit/test_sendgrid_server.py`` checks that both modes refuse the same fields.

Run standalone: ``python -m tests.support.sendgrid_server --port 8025``.
"""

from __future__ import annotations

import argparse
import copy
import functools
import gzip
import http
import json
import os
import secrets
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from jsonschema import Draft202012Validator, FormatChecker

__all__ = [
    "AbortedRequest",
    "AcceptedRequest",
    "RejectedRequest",
    "SendGridServer",
    "ValidateMode",
    "Violation",
    "main",
    "rate_limit_headers",
]

ValidateMode = Literal["full", "rules"]
AbortReason = Literal["eof", "reset"]

MAIL_SEND_PATH = "/v3/mail/send"
MAX_RECIPIENTS = 1000
MAX_PERSONALIZATIONS = 1000
MAX_SUBSTITUTION_BYTES = 10_000
MAX_CUSTOM_ARGS_BYTES = 10_000
MAX_SEND_AT_AHEAD = 72 * 3600
MAX_BODY_BYTES = 30 * 1024 * 1024
FORBIDDEN_HEADERS = frozenset(
    {
        "x-sg-id",
        "x-sg-eid",
        "received",
        "dkim-signature",
        "content-type",
        "content-transfer-encoding",
        "to",
        "from",
        "subject",
        "reply-to",
        "cc",
        "bcc",
    }
)
RECIPIENT_KINDS = ("to", "cc", "bcc")
_MAX_MESSAGE = 300

_SCHEMA_ENV = "SENDGRID_MAIL_SCHEMA"
_SCHEMA_CANDIDATES = (
    Path(__file__).with_name("tsg_mail_v3.json"),
    # The project's shared folder sits beside the repository (developers' machines and CI).
    Path(__file__).resolve().parents[3] / "shared" / "sendgrid" / "tsg_mail_v3.json",
)


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Violation:
    """One reason a request was refused, in SendGrid's error-object shape."""

    field: str | None
    message: str

    def as_error(self) -> dict[str, Any]:
        return {"message": self.message, "field": self.field, "help": None}


@dataclass(frozen=True, slots=True)
class AcceptedRequest:
    """A request answered 202 (200 in sandbox mode); ``body`` is None unless bodies are kept."""

    message_id: str
    status: int
    headers: dict[str, str]  # lower-cased names
    recipients: int
    sandbox: bool
    body: dict[str, Any] | None
    received_at: float


@dataclass(frozen=True, slots=True)
class RejectedRequest:
    """A request the real API would refuse (bad auth, bad JSON, schema or rule violation)."""

    status: int
    violations: tuple[Violation, ...]
    headers: dict[str, str]
    body: Any  # parsed JSON when available and bodies are kept, else None
    received_at: float


@dataclass(frozen=True, slots=True)
class AbortedRequest:
    """A request whose client went away before its whole body arrived (killed, timed out).

    The client's fault, not the payload's: never judged, answered, accepted or counted as
    rejected. ``received`` is the number of body bytes that did arrive, ``expected`` the
    Content-Length; ``reason`` is "eof" (connection closed early) or "reset" (connection reset).
    """

    expected: int
    received: int
    reason: AbortReason
    headers: dict[str, str]  # lower-cased names
    received_at: float


class _IncompleteBody(Exception):
    """Raised by ``_Handler._drain`` when the connection ends before Content-Length bytes."""

    def __init__(self, expected: int, received: int, reason: AbortReason) -> None:
        super().__init__(f"{reason} after {received} of {expected} body bytes")
        self.expected = expected
        self.received = received
        self.reason: AbortReason = reason


@dataclass(frozen=True, slots=True)
class _Fault:
    status: int
    headers: Mapping[str, str]
    body: bytes


@dataclass(slots=True)
class _Trigger:
    predicate: Callable[[dict[str, Any]], bool]
    fault: _Fault
    remaining: int | None


@dataclass(slots=True)
class _Delay:
    seconds: float
    fault: _Fault | None


@dataclass(slots=True)
class _AddressRule:
    status: int
    remaining: int | None


@dataclass(slots=True)
class _State:
    """Everything guarded by ``SendGridServer._lock``."""

    requests: list[AcceptedRequest] = field(default_factory=list)
    rejected: list[RejectedRequest] = field(default_factory=list)
    aborted: list[AbortedRequest] = field(default_factory=list)
    attempts: int = 0
    connections: int = 0
    accepted_requests: int = 0
    accepted_recipients: int = 0
    injected_failures: int = 0
    faults: deque[_Fault] = field(default_factory=deque)
    delays: deque[_Delay] = field(default_factory=deque)
    triggers: list[_Trigger] = field(default_factory=list)
    addresses: dict[str, _AddressRule] = field(default_factory=dict)


def rate_limit_headers(reset_in: float = 1.0, limit: int = 600) -> dict[str, str]:
    """Headers of a real SendGrid 429: the limit, nothing remaining, reset as epoch seconds."""
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(int(time.time() + reset_in + 0.999)),
    }


def _error_body(*violations: Violation) -> bytes:
    return json.dumps({"errors": [v.as_error() for v in violations]}).encode()


def _default_fault_body(status: int) -> bytes:
    message = "too many requests" if status == 429 else http.HTTPStatus(status).phrase.lower()
    return json.dumps({"errors": [{"field": None, "message": message}]}).encode()


def _make_fault(status: int, headers: Mapping[str, str] | None, body: Any) -> _Fault:
    if body is None:
        raw = _default_fault_body(status)
    elif isinstance(body, bytes):
        raw = body
    elif isinstance(body, str):
        raw = body.encode()
    else:
        raw = json.dumps(body).encode()
    return _Fault(status=status, headers=dict(headers or {}), body=raw)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _schema_path(explicit: str | os.PathLike[str] | None) -> Path:
    if explicit is not None:
        return Path(explicit)
    if env := os.environ.get(_SCHEMA_ENV):
        return Path(env)
    for candidate in _SCHEMA_CANDIDATES:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"tsg_mail_v3.json not found; set {_SCHEMA_ENV} or place it next to {__file__}"
    )


@functools.lru_cache(maxsize=4)
def _validators(path: Path) -> tuple[Draft202012Validator, Draft202012Validator]:
    """Build (full, message-level) validators once per schema file: building costs ~10 ms."""
    spec = json.loads(path.read_text(encoding="utf-8"))
    components = spec["components"]
    schema = copy.deepcopy(
        components["requestBodies"]["PostMailSend"]["content"]["application/json"]["schema"]
    )
    # Spec bug: top-level custom_args is typed string; the live API wants an object of strings.
    schema["properties"]["custom_args"] = {"type": "object"}
    # The body schema refers to "#/components/..."; embedding components makes those resolve.
    schema["components"] = components
    Draft202012Validator.check_schema(schema)
    checker = FormatChecker(formats=["email"])
    full = Draft202012Validator(schema, format_checker=checker)
    # For validate="rules": personalization items are checked by hand, the rest by the schema.
    message_level = copy.deepcopy(schema)
    message_level["properties"]["personalizations"] = {"type": "array"}
    return full, Draft202012Validator(message_level, format_checker=checker)


def _path(parts: Iterator[Any] | tuple[Any, ...] | list[Any]) -> str | None:
    dotted = ".".join(str(p) for p in parts)
    return dotted or None


def _schema_violations(validator: Draft202012Validator, body: Any) -> list[Violation]:
    out: list[Violation] = []
    for error in validator.iter_errors(body):
        parts = list(error.absolute_path)
        if error.validator == "required" and isinstance(error.instance, dict):
            # Name the missing property itself, as SendGrid does ("from.email").
            for name in error.validator_value:
                if name not in error.instance:
                    out.append(Violation(_path([*parts, name]), f"The {name} field is required."))
            continue
        message = error.message
        if len(message) > _MAX_MESSAGE:  # jsonschema repr()s the instance, e.g. 1001 items
            message = message[: _MAX_MESSAGE - 3] + "..."
        out.append(Violation(_path(parts), message))
    return out


def _is_int(value: Any) -> bool:
    # JSON Schema "integer" also admits 1.0 but never booleans.
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, float) and value.is_integer()
    )


def _check_address(obj: Any, where: str, out: list[Violation]) -> None:
    """Hand-written ``MailTo``/``MailFrom``: an object with an e-mail string and optional name."""
    if not isinstance(obj, dict):
        out.append(Violation(where, f"{obj!r} is not of type 'object'"))
        return
    if "email" not in obj:
        out.append(Violation(f"{where}.email", "The email field is required."))
    elif not isinstance(obj["email"], str):
        out.append(Violation(f"{where}.email", f"{obj['email']!r} is not of type 'string'"))
    elif "@" not in obj["email"]:
        out.append(Violation(f"{where}.email", f"{obj['email']!r} is not a 'email'"))
    if "name" in obj and not isinstance(obj["name"], str):
        out.append(Violation(f"{where}.name", f"{obj['name']!r} is not of type 'string'"))


def _personalization_structure(items: list[Any]) -> list[Violation]:
    """The personalization item schema, written out by hand because jsonschema is ~15x slower.

    Must reject exactly what the schema rejects; the unit tests compare both modes.
    """
    out: list[Violation] = []
    if len(items) > MAX_PERSONALIZATIONS:
        out.append(Violation("personalizations", f"{items!r:.60} is too long"))
    for i, p in enumerate(items):
        base = f"personalizations.{i}"
        if not isinstance(p, dict):
            out.append(Violation(base, f"{p!r} is not of type 'object'"))
            continue
        if "to" not in p:
            out.append(Violation(f"{base}.to", "The to field is required."))
        for kind in RECIPIENT_KINDS:
            if kind not in p:
                continue
            lst = p[kind]
            if not isinstance(lst, list):
                out.append(Violation(f"{base}.{kind}", f"{lst!r} is not of type 'array'"))
                continue
            if kind != "to" and len(lst) > MAX_RECIPIENTS:
                out.append(Violation(f"{base}.{kind}", f"{lst!r:.60} is too long"))
            for j, addr in enumerate(lst):
                _check_address(addr, f"{base}.{kind}.{j}", out)
        if "from" in p:
            _check_address(p["from"], f"{base}.from", out)
        if "subject" in p:
            subject = p["subject"]
            if not isinstance(subject, str):
                out.append(Violation(f"{base}.subject", f"{subject!r} is not of type 'string'"))
            elif not subject:
                out.append(Violation(f"{base}.subject", "'' should be non-empty"))
        for key in ("headers", "dynamic_template_data", "substitutions", "custom_args"):
            if key in p and not isinstance(p[key], dict):
                out.append(Violation(f"{base}.{key}", f"{p[key]!r} is not of type 'object'"))
        for key in ("substitutions", "custom_args"):
            value = p.get(key)
            if isinstance(value, dict) and len(value) > 10_000:
                out.append(Violation(f"{base}.{key}", "has too many properties"))
        subs = p.get("substitutions")
        if isinstance(subs, dict):
            for name, value in subs.items():
                if not isinstance(value, str):
                    out.append(
                        Violation(
                            f"{base}.substitutions.{name}", f"{value!r} is not of type 'string'"
                        )
                    )
        if "send_at" in p and not _is_int(p["send_at"]):
            out.append(Violation(f"{base}.send_at", f"{p['send_at']!r} is not of type 'integer'"))
    return out


def _string_values(obj: Any, where: str, what: str, out: list[Violation]) -> None:
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(value, str):
                out.append(Violation(f"{where}.{key}", f"{what} values must be strings."))


def _forbidden_headers(obj: Any, where: str, out: list[Violation]) -> None:
    if isinstance(obj, dict):
        for name in obj:
            if isinstance(name, str) and name.strip().lower() in FORBIDDEN_HEADERS:
                out.append(Violation(f"{where}.{name}", f"The header {name!r} may not be set."))


def _exceeds(obj: dict[Any, Any], limit: int) -> bool:
    """Whether keys plus values take more than ``limit`` bytes of UTF-8."""
    if all(isinstance(v, str) for v in obj.values()):
        chars = sum(len(str(k)) + len(v) for k, v in obj.items())
        if chars * 4 <= limit:  # fast path: UTF-8 needs at most 4 bytes a character
            return False
    size = sum(
        len(str(k).encode()) + (len(v.encode()) if isinstance(v, str) else len(json.dumps(v)))
        for k, v in obj.items()
    )
    return size > limit


def _send_at(value: Any, where: str, now: float, out: list[Violation]) -> None:
    if _is_int(value) and value > now + MAX_SEND_AT_AHEAD:
        out.append(Violation(where, "send_at may not be more than 72 hours in the future."))


def _documented_rules(body: dict[str, Any]) -> list[Violation]:
    """Rules from SendGrid's docs that tsg_mail_v3.json does not encode.

    Written defensively: the body may also have schema violations, reported separately.
    """
    out: list[Violation] = []
    now = time.time()
    personalizations = body.get("personalizations")
    if isinstance(personalizations, list) and not personalizations:
        out.append(Violation("personalizations", "At least one personalization is required."))

    seen: dict[str, tuple[int, str, int]] = {}
    recipients = 0
    message_args = body.get("custom_args")
    if not isinstance(message_args, dict):
        message_args = {}
    for i, p in enumerate(personalizations if isinstance(personalizations, list) else []):
        if not isinstance(p, dict):
            continue
        base = f"personalizations.{i}"
        for kind in RECIPIENT_KINDS:
            lst = p.get(kind)
            if not isinstance(lst, list):
                continue
            recipients += len(lst)
            for j, addr in enumerate(lst):
                if not isinstance(addr, dict):
                    continue
                email = addr.get("email")
                if isinstance(email, str):
                    key = email.strip().lower()
                    if key in seen:
                        first = "personalizations.{}.{}.{}.email".format(*seen[key])
                        out.append(
                            Violation(
                                f"{base}.{kind}.{j}.email",
                                "Each email address in the personalization block should be "
                                f"unique between to, cc, and bcc (also at {first}).",
                            )
                        )
                    else:
                        seen[key] = (i, kind, j)
                name = addr.get("name")
                if isinstance(name, str) and (";" in name or "," in name):
                    out.append(
                        Violation(f"{base}.{kind}.{j}.name", "Names may not contain ';' or ','.")
                    )
        headers = p.get("headers")
        _forbidden_headers(headers, f"{base}.headers", out)
        _string_values(headers, f"{base}.headers", "Header", out)
        args = p.get("custom_args")
        _string_values(args, f"{base}.custom_args", "custom_args", out)
        merged = {**message_args, **args} if isinstance(args, dict) else message_args
        if merged and _exceeds(merged, MAX_CUSTOM_ARGS_BYTES):
            out.append(Violation(f"{base}.custom_args", "custom_args may not exceed 10,000 bytes."))
        subs = p.get("substitutions")
        if isinstance(subs, dict) and _exceeds(subs, MAX_SUBSTITUTION_BYTES):
            out.append(
                Violation(
                    f"{base}.substitutions",
                    "Substitutions may not exceed 10,000 bytes per personalization.",
                )
            )
        if "send_at" in p:
            _send_at(p["send_at"], f"{base}.send_at", now, out)
    if recipients > MAX_RECIPIENTS:
        out.append(
            Violation(
                "personalizations",
                f"There is a limit of {MAX_RECIPIENTS} total recipients (to + cc + bcc) per "
                f"request; got {recipients}.",
            )
        )

    _forbidden_headers(body.get("headers"), "headers", out)
    _string_values(body.get("headers"), "headers", "Header", out)
    _string_values(body.get("custom_args"), "custom_args", "custom_args", out)
    if "send_at" in body:
        _send_at(body["send_at"], "send_at", now, out)
    if "reply_to" in body and "reply_to_list" in body:
        out.append(Violation("reply_to_list", "Use either reply_to or reply_to_list, not both."))

    content = body.get("content")
    if isinstance(content, list):
        types = [c.get("type") if isinstance(c, dict) else None for c in content]
        if (
            "text/plain" in types
            and "text/html" in types
            and types.index("text/plain") > types.index("text/html")
        ):
            out.append(
                Violation(
                    f"content.{types.index('text/plain')}.type",
                    "If present, text/plain content must be first, followed by text/html.",
                )
            )
        if not content and "template_id" not in body:
            out.append(Violation("content", "At least one content item is required."))
    elif "content" not in body and "template_id" not in body:
        out.append(Violation("content", "Unless a template_id is given, content is required."))
    return out


def _dedupe(violations: list[Violation]) -> list[Violation]:
    return list(dict.fromkeys(violations))


def _count_recipients(body: dict[str, Any]) -> int:
    return sum(len(p.get(kind) or ()) for p in body["personalizations"] for kind in RECIPIENT_KINDS)


# --------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """Answers the single endpoint; all state lives on the ``SendGridServer``."""

    protocol_version = "HTTP/1.1"
    server: _HTTPServer
    server_version = "sendgrid-test-server"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.owner.log_requests:
            super().log_message(format, *args)

    def _send(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if body:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (timeout); what happened server-side stays recorded.
            self.close_connection = True

    def _not_here(self) -> None:
        try:
            self._drain()
        except _IncompleteBody:
            self.close_connection = True  # nobody left to answer
            return
        if self.path.split("?", 1)[0] == MAIL_SEND_PATH:
            self._send(405, _error_body(Violation(None, "method not allowed")), {"Allow": "POST"})
        else:
            self._send(404, _error_body(Violation(None, "not found")))

    do_GET = do_PUT = do_PATCH = do_DELETE = _not_here

    def _drain(self) -> bytes | None:
        """Read the whole body (keeping the connection usable); None without a valid length.

        Raises ``_IncompleteBody`` if the connection closes or resets before Content-Length
        bytes arrived: a client killed mid-request must not look like a malformed body.
        """
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            return None
        remaining = length
        chunks: list[bytes] = []
        while remaining > 0:
            try:
                chunk = self.rfile.read(min(remaining, 1 << 20))
            except OSError as exc:  # ConnectionResetError, mostly
                self.close_connection = True
                raise _IncompleteBody(length, length - remaining, "reset") from exc
            if not chunk:
                self.close_connection = True
                raise _IncompleteBody(length, length - remaining, "eof")
            remaining -= len(chunk)
            if length <= MAX_BODY_BYTES:
                chunks.append(chunk)
        return b"".join(chunks)

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != MAIL_SEND_PATH:
            self._not_here()
            return
        try:
            raw = self._drain()
        except _IncompleteBody as cut:
            self.server.owner._abort(dict(self.headers.items()), cut)
            return  # the client is gone: no answer, and the connection is closed
        status, body, headers = self.server.owner._handle(dict(self.headers.items()), raw)
        self._send(status, body, headers)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], owner: SendGridServer) -> None:
        self.owner = owner
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.owner._connected()
        super().process_request(request, client_address)


class SendGridServer:
    """A local stand-in for ``https://api.sendgrid.com`` that validates like the real API.

    ``api_key``: if set, only ``Bearer <api_key>`` is accepted; otherwise any non-empty key.
    ``validate``: "full" runs jsonschema over the whole body; "rules" hand-checks personalization
    items (~12x faster, for benchmarks). Both apply the documented rules the schema misses.
    ``keep_bodies``: with False only counters and bodiless records are kept (1M-recipient runs).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        validate: ValidateMode = "full",
        keep_bodies: bool = True,
        log_requests: bool = False,
        schema_path: str | os.PathLike[str] | None = None,
    ) -> None:
        if validate not in ("full", "rules"):
            raise ValueError(f"validate must be 'full' or 'rules', not {validate!r}")
        self.host = host
        self.requested_port = port
        self.api_key = api_key
        self.validate: ValidateMode = validate
        self.keep_bodies = keep_bodies
        self.log_requests = log_requests
        self._full, self._message_level = _validators(_schema_path(schema_path).resolve())
        self._lock = threading.Lock()
        self._state = _State()
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> SendGridServer:
        if self._httpd is not None:
            return self
        self._stopping.clear()
        self._httpd = _HTTPServer((self.host, self.requested_port), self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"sendgrid-server-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._stopping.set()  # wakes handlers sleeping in delay_next
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> SendGridServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("SendGridServer is not running")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """Pass as ``SendGridAPIClient(host=...)``; the library appends ``/v3/mail/send``."""
        return f"http://{self.host}:{self.port}"

    # ---- recorded traffic (snapshots, safe to read while requests arrive) -----------------

    @property
    def requests(self) -> list[AcceptedRequest]:
        with self._lock:
            return list(self._state.requests)

    @property
    def rejected(self) -> list[RejectedRequest]:
        with self._lock:
            return list(self._state.rejected)

    @property
    def aborted(self) -> list[AbortedRequest]:
        """Requests cut off before their whole body arrived; neither accepted nor rejected."""
        with self._lock:
            return list(self._state.aborted)

    @property
    def aborted_requests(self) -> int:
        with self._lock:
            return len(self._state.aborted)

    @property
    def attempts(self) -> int:
        """Every POST to /v3/mail/send, whatever the answer: counts retries and aborted ones."""
        with self._lock:
            return self._state.attempts

    @property
    def connections(self) -> int:
        """TCP connections accepted so far (a client keeping its connections opens few)."""
        with self._lock:
            return self._state.connections

    def _connected(self) -> None:
        with self._lock:
            self._state.connections += 1

    @property
    def accepted_requests(self) -> int:
        with self._lock:
            return self._state.accepted_requests

    @property
    def accepted_recipients(self) -> int:
        """to + cc + bcc over accepted requests."""
        with self._lock:
            return self._state.accepted_recipients

    @property
    def injected_failures(self) -> int:
        with self._lock:
            return self._state.injected_failures

    def recipients(self) -> list[str]:
        """All accepted ``to`` addresses in arrival order; needs ``keep_bodies=True``."""
        if not self.keep_bodies:
            raise RuntimeError("recipients() needs SendGridServer(keep_bodies=True)")
        with self._lock:
            records = list(self._state.requests)
        return [
            to["email"]
            for record in records
            if record.body is not None
            for p in record.body["personalizations"]
            for to in p["to"]
        ]

    def message_ids(self) -> list[str]:
        with self._lock:
            return [r.message_id for r in self._state.requests]

    def assert_all_valid(self) -> None:
        """Raise AssertionError listing violations if any request was ever refused as invalid.

        Aborted requests (the client went away mid-body) are not invalid and do not count.
        """
        rejected = self.rejected
        if rejected:
            lines = [
                f"{r.status} {v.field}: {v.message}" for r in rejected[:5] for v in r.violations
            ]
            raise AssertionError(
                f"{len(rejected)} request(s) were invalid:\n  " + "\n  ".join(lines)
            )

    def reset(self) -> None:
        """Forget traffic and pending faults, e.g. between tests sharing one server."""
        with self._lock:
            self._state = _State()

    # ---- fault injection ---------------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        status: int = 429,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
    ) -> None:
        """Answer the next ``n`` requests with ``status`` (the body is still validated).

        For a realistic 429 pass ``headers=rate_limit_headers(1)`` or ``{"Retry-After": "1"}``;
        ``body`` may be bytes, str or a JSON-serialisable value (default: SendGrid's error body).
        """
        fault = _make_fault(status, headers, body)
        with self._lock:
            self._state.faults.extend([fault] * n)

    def delay_next(self, n: int = 1, seconds: float = 1.0, status: int | None = None) -> None:
        """Sleep ``seconds`` before answering the next ``n`` requests, to provoke client timeouts.

        Like the real API, a request the client gave up on is still processed and, if valid,
        accepted (the duplicate-send hazard). Pass ``status`` to answer that fault instead.
        """
        fault = None if status is None else _make_fault(status, None, None)
        with self._lock:
            self._state.delays.extend(_Delay(seconds, fault) for _ in range(n))

    def fail_when(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        status: int = 500,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        times: int | None = None,
    ) -> None:
        """Fail valid requests whose parsed body matches ``predicate`` (``times`` at most)."""
        trigger = _Trigger(predicate, _make_fault(status, headers, body), times)
        with self._lock:
            self._state.triggers.append(trigger)

    def reject_address(self, address: str, status: int = 400, times: int | None = None) -> None:
        """Refuse any request carrying ``address`` (case-insensitive), naming its field."""
        with self._lock:
            self._state.addresses[address.strip().lower()] = _AddressRule(status, times)

    def clear_faults(self) -> None:
        with self._lock:
            self._state.faults.clear()
            self._state.delays.clear()
            self._state.triggers.clear()
            self._state.addresses.clear()

    # ---- request handling --------------------------------------------------------------------

    def violations(self, body: Any) -> list[Violation]:
        """Everything the real API would refuse in ``body``; [] means valid. Pure, no recording."""
        if self.validate == "full" or not isinstance(body, dict):
            found = _schema_violations(self._full, body)
        else:
            found = _schema_violations(self._message_level, body)
            items = body.get("personalizations")
            if isinstance(items, list):
                found += _personalization_structure(items)
        if isinstance(body, dict):
            found += _documented_rules(body)
        return _dedupe(found)

    def _authorize(self, headers: Mapping[str, str]) -> Violation | None:
        auth = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        scheme, _, key = auth.partition(" ")
        if scheme != "Bearer" or not key.strip():
            return Violation(None, "Permission denied, wrong credentials")
        if key.strip() == "None":
            # What SendGridAPIClient sends when no key is configured; the real API says 401.
            return Violation(None, "Permission denied, wrong credentials (API key is 'None')")
        if self.api_key is not None and key.strip() != self.api_key:
            return Violation(
                None, "The provided authorization grant is invalid, expired, or revoked"
            )
        return None

    def _parse(
        self, headers: Mapping[str, str], raw: bytes | None
    ) -> tuple[int, list[Violation], Any]:
        """Auth, size, media type and JSON: returns (status, violations, parsed body)."""
        if (problem := self._authorize(headers)) is not None:
            return 401, [problem], None
        if raw is None:
            return 411, [Violation(None, "Content-Length is required.")], None
        if int(headers["content-length"]) > MAX_BODY_BYTES:
            return 413, [Violation(None, "The request body may not exceed 30 MB.")], None
        if headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return 415, [Violation(None, "Content-Type must be application/json.")], None
        if headers.get("content-encoding", "").lower() == "gzip":
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError) as exc:
                return 400, [Violation(None, f"Bad Request: invalid gzip body ({exc})")], None
        try:
            body = json.loads(raw, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            return 400, [Violation(None, f"Bad Request: body is not valid JSON ({exc})")], None
        return 202, [], body

    def _abort(self, raw_headers: Mapping[str, str], cut: _IncompleteBody) -> None:
        """Record a cut-off request. It consumes no injected fault or delay: nobody hears it."""
        record = AbortedRequest(
            expected=cut.expected,
            received=cut.received,
            reason=cut.reason,
            headers={k.lower(): v for k, v in raw_headers.items()},
            received_at=time.time(),
        )
        with self._lock:
            self._state.attempts += 1
            self._state.aborted.append(record)

    def _handle(
        self, raw_headers: Mapping[str, str], raw: bytes | None
    ) -> tuple[int, bytes, Mapping[str, str]]:
        headers = {k.lower(): v for k, v in raw_headers.items()}
        received_at = time.time()
        with self._lock:
            self._state.attempts += 1
            fault = self._state.faults.popleft() if self._state.faults else None
            delay = self._state.delays.popleft() if self._state.delays else None
        if delay is not None:
            self._stopping.wait(delay.seconds)
            fault = fault or delay.fault

        status, problems, body = self._parse(headers, raw)
        if not problems:
            problems = self.violations(body)
            status = 400 if problems else status
        if problems:
            record = RejectedRequest(
                status=status,
                violations=tuple(problems),
                headers=headers,
                body=body if self.keep_bodies else None,
                received_at=received_at,
            )
            with self._lock:
                self._state.rejected.append(record)
        elif fault is None:
            fault = self._triggered_fault(body)

        if fault is not None:
            with self._lock:
                self._state.injected_failures += 1
            return fault.status, fault.body, fault.headers
        if problems:
            return status, _error_body(*problems), {}

        sandbox = bool(
            ((body.get("mail_settings") or {}).get("sandbox_mode") or {}).get("enable", False)
        )
        message_id = secrets.token_urlsafe(16)
        recipients = _count_recipients(body)
        accepted = AcceptedRequest(
            message_id=message_id,
            status=200 if sandbox else 202,
            headers=headers,
            recipients=recipients,
            sandbox=sandbox,
            body=body if self.keep_bodies else None,
            received_at=received_at,
        )
        with self._lock:
            self._state.requests.append(accepted)
            self._state.accepted_requests += 1
            self._state.accepted_recipients += recipients
        return accepted.status, b"", {"X-Message-Id": message_id}

    def _triggered_fault(self, body: dict[str, Any]) -> _Fault | None:
        """fail_when / reject_address, for a valid body; consumes one use of the rule that fires."""
        with self._lock:
            triggers = list(self._state.triggers)
            addresses = dict(self._state.addresses)
        for trigger in triggers:
            if trigger.predicate(body):
                with self._lock:
                    if trigger.remaining is not None:
                        if trigger.remaining <= 0:
                            continue
                        trigger.remaining -= 1
                return trigger.fault
        if not addresses:
            return None
        for i, p in enumerate(body["personalizations"]):
            for kind in RECIPIENT_KINDS:
                for j, addr in enumerate(p.get(kind) or ()):
                    rule = addresses.get(addr["email"].strip().lower())
                    if rule is None:
                        continue
                    with self._lock:
                        if rule.remaining is not None:
                            if rule.remaining <= 0:
                                continue
                            rule.remaining -= 1
                    problem = Violation(
                        f"personalizations.{i}.{kind}.{j}.email",
                        "Does not contain a valid address.",
                    )
                    return _Fault(rule.status, {}, _error_body(problem))
        return None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Serve until interrupted, for manual runs against the CLI or an external benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default=None, help="accept only this key (default: any)")
    parser.add_argument("--validate", choices=["full", "rules"], default="full")
    parser.add_argument("--keep-bodies", action="store_true", help="keep every body in memory")
    parser.add_argument("--quiet", action="store_true", help="do not log each request")
    args = parser.parse_args(argv)
    server = SendGridServer(
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        validate=args.validate,
        keep_bodies=args.keep_bodies,
        log_requests=not args.quiet,
    )
    signal.signal(signal.SIGTERM, _interrupt)  # let `kill` print the summary too
    with server:
        print(server.url, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    print(
        f"accepted {server.accepted_requests} requests / {server.accepted_recipients} recipients, "
        f"rejected {len(server.rejected)}, aborted {server.aborted_requests}, "
        f"injected {server.injected_failures}",
        flush=True,
    )


if __name__ == "__main__":
    main()
