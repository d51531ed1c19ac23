"""SendGrid v3 Mail Send through the official library: one request carries a whole batch.

The shared subject and bodies go once per request; each recipient is a personalization with
`substitutions` for the tokens, its own List-Unsubscribe header and `custom_args` naming the
delivery, so events come back tied to the ledger row (see `sendgrid_payload` for the body, built
without the library's helper classes, which cost ~10x more and reverse personalization order).
Each sending thread keeps its connection open between requests (`kept_alive`).

Failures (REFERENCE §1.3): 429 waits for Retry-After / X-RateLimit-Reset and pauses every
thread of this transport; 5xx and connection failures back off and retry; a lost answer (read
timeout, connection dropped after the body went) is *unknown*, because SendGrid may have
accepted it and there is no idempotency key; other 4xx fail the request with SendGrid's
message, except that errors naming single personalizations fail only those recipients and the
rest is sent again.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import urllib.error
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient

from digest.config import Settings
from digest.mail.message import one_line
from digest.transports import (
    OutgoingBatch,
    OutgoingMessage,
    OutgoingRecipient,
    SendOutcome,
    SendResult,
    TransportError,
)
from digest.transports.kept_alive import ConnectionPool, kept_alive
from digest.transports.retry import RetryPolicy
from digest.transports.sendgrid_payload import SharedPart, payload_json

_JSON_TEXT = {"Content-Type": "application/json; charset=utf-8"}


class _Payload(bytes):
    """A request body that shows as its size when formatted.

    python_http_client formats every request body into a debug message ("PAYLOAD: …") whether
    or not debug logging is on: for a 1000-recipient request that is a 600 KB repr per call
    (~8% of a send's CPU), and with debug logging on it would write every recipient's signed
    unsubscribe links to the log. Formatted, this body says only how long it is.
    """

    def __str__(self) -> str:
        return f"<{len(self)} bytes of JSON>"

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


class _Body:
    """Our JSON text as the library wants it: it only calls `encode` (see `_post`)."""

    def __init__(self, text: str) -> None:
        self._payload = _Payload(text.encode("utf-8"))

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self._payload


_PERSONALIZATION_FIELD = re.compile(r"^personalizations\.(\d+)(\.|$)")
_MAX_REJECTION_ROUNDS = 5  # re-sends after per-address refusals before failing the rest


@dataclass(frozen=True)
class _Answer:
    """How one request ended, after retries."""

    outcome: SendOutcome
    message_id: str | None = None
    error: str | None = None
    bad: dict[int, str] | None = None  # personalization index → SendGrid's message


SHARED_KEPT = 64  # messages whose shared JSON is kept (a personal issue sends one per variant)


class _PauseGate:
    """After a 429, every request of this transport waits until the account's limit resets."""

    def __init__(self, policy: RetryPolicy) -> None:
        self._policy = policy
        self._lock = threading.Lock()
        self._until = 0.0

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._until = max(self._until, self._policy.clock() + seconds)

    def wait(self) -> None:
        while True:
            with self._lock:
                remaining = self._until - self._policy.clock()
            if remaining <= 0:
                return
            self._policy.sleep(remaining)


class SendGridTransport:
    name = "sendgrid"

    def __init__(
        self,
        *,
        settings: Settings,
        api_key: str,
        policy: RetryPolicy | None = None,
        host: str | None = None,
        timeout: float | None = None,
        batch_size: int | None = None,
    ) -> None:
        self.settings = settings
        self.policy = policy or RetryPolicy()
        self.timeout = timeout or settings.sendgrid.timeout
        self.max_batch_size = min(batch_size or settings.sendgrid.batch_size, 1000)
        self._client = SendGridAPIClient(api_key=api_key, host=host or settings.sendgrid.api_url)
        self._connections = ConnectionPool()  # one kept connection per sending thread
        self._client.client = kept_alive(self._client.client, self._connections)
        self._gate = _PauseGate(self.policy)
        self._shared: dict[int, tuple[OutgoingMessage, SharedPart]] = {}
        self.shared_kept = SHARED_KEPT  # a send helper keeps fewer (its own few variants)
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, *, policy: RetryPolicy) -> SendGridTransport:
        if settings.sendgrid_api_key is None:
            raise TransportError("SENDGRID_API_KEY is not set: the sendgrid transport needs it")
        return cls(
            settings=settings, api_key=settings.sendgrid_api_key.get_secret_value(), policy=policy
        )

    def close(self) -> None:
        self._shared.clear()
        self._connections.close()

    # -- sending --------------------------------------------------------------------------------

    def send(self, batch: OutgoingBatch) -> list[SendResult]:
        recipients = batch.recipients
        results: list[SendResult | None] = [None] * len(recipients)
        remaining = list(range(len(recipients)))
        while remaining:  # an address may appear only once per request (case-insensitively)
            seen: set[str] = set()
            group: list[int] = []
            later: list[int] = []
            for i in remaining:
                key = recipients[i].email.strip().lower()
                (later if key in seen else group).append(i)
                seen.add(key)
            self._send_group(batch.message, recipients, group, results)
            remaining = later
        return [r for r in results if r is not None]

    def _send_group(
        self,
        message: OutgoingMessage,
        recipients: Sequence[OutgoingRecipient],
        indices: list[int],
        results: list[SendResult | None],
    ) -> None:
        shared = self._shared_for(message)
        rounds = 0
        while indices:
            answer = self._post(payload_json(shared, [recipients[i] for i in indices]))
            if answer.bad and rounds < _MAX_REJECTION_ROUNDS and len(answer.bad) < len(indices):
                rounds += 1
                for position, reason in answer.bad.items():
                    i = indices[position]
                    results[i] = SendResult(recipients[i].email, SendOutcome.FAILED, None, reason)
                indices = [i for position, i in enumerate(indices) if position not in answer.bad]
                continue
            bad = answer.bad or {}
            for position, i in enumerate(indices):
                error = bad.get(position, answer.error)
                results[i] = SendResult(
                    recipients[i].email, answer.outcome, answer.message_id, error
                )
            return

    def _shared_for(self, message: OutgoingMessage) -> SharedPart:
        key = id(message)
        with self._lock:
            cached = self._shared.get(key)
            if cached is None or cached[0] is not message:
                if len(self._shared) >= self.shared_kept:  # a personal issue: one per variant
                    self._shared.pop(next(iter(self._shared)))
                cached = (message, SharedPart(self.settings, message))
                self._shared[key] = cached
            return cached[1]

    def _post(self, body: str) -> _Answer:
        """One request (JSON text), retried as the policy allows; never raises for answers."""
        policy = self.policy
        deadline = policy.deadline()
        ambiguous = False
        attempt = 0  # counts failures; a 429 ("not yet") is bounded by the deadline instead
        limited = 0
        while True:
            self._gate.wait()
            attempt += 1
            try:
                # A Content-Type other than exactly "application/json" makes the library send
                # our JSON text as is instead of running json.dumps over it (see module doc).
                response = self._client.client.mail.send.post(
                    request_body=_Body(body), request_headers=_JSON_TEXT, timeout=self.timeout
                )
                return _Answer(SendOutcome.ACCEPTED, response.headers.get("X-Message-Id"))
            except HTTPError as exc:
                status = int(exc.status_code)
                error = f"SendGrid {status}: {_error_message(exc)}"
                if status == 429:
                    limited += 1
                    attempt -= 1
                    wait = policy.requested_wait(exc.headers, limited)
                    self._gate.pause(wait)
                    if policy.on_pause is not None:
                        policy.on_pause(wait)
                elif status >= 500:
                    wait = policy.backoff(attempt)
                else:
                    return _Answer(SendOutcome.FAILED, None, error, _bad_personalizations(exc))
            except urllib.error.URLError as exc:
                # Raised while connecting or sending the body: SendGrid cannot have accepted it.
                error = f"cannot reach SendGrid at {self.settings.sendgrid.api_url}: {exc.reason}"
                wait = policy.backoff(attempt)
            except (TimeoutError, ConnectionError, http.client.HTTPException, OSError) as exc:
                error = (
                    f"no answer from SendGrid ({type(exc).__name__}: {exc}); it may have been sent"
                )
                ambiguous = True
                if not policy.retry_ambiguous:
                    return _Answer(SendOutcome.UNKNOWN, None, error)
                wait = policy.backoff(attempt)
            if attempt >= policy.max_attempts or policy.clock() + wait > deadline:
                outcome = SendOutcome.UNKNOWN if ambiguous else SendOutcome.FAILED
                tries = attempt + limited
                return _Answer(outcome, None, f"gave up after {tries} attempts: {error}")
            policy.sleep(wait)


def _errors(exc: HTTPError) -> list[dict[str, Any]]:
    try:
        document = json.loads(exc.body or b"{}")
    except (ValueError, TypeError):
        return []
    errors = document.get("errors") if isinstance(document, dict) else None
    return [e for e in errors or [] if isinstance(e, dict)]


def _error_message(exc: HTTPError) -> str:
    errors = _errors(exc)
    if not errors:
        body = exc.body.decode("utf-8", "replace") if isinstance(exc.body, bytes) else ""
        return one_line(body)[:300] or str(getattr(exc, "reason", "")) or "no message"
    parts = []
    for error in errors[:5]:
        where = f" ({error['field']})" if error.get("field") else ""
        parts.append(f"{error.get('message', '')}{where}")
    return one_line("; ".join(parts))[:1000]


def _bad_personalizations(exc: HTTPError) -> dict[int, str] | None:
    """When every error names a personalization, which ones: they alone are at fault."""
    errors = _errors(exc)
    bad: dict[int, str] = {}
    for error in errors:
        match = _PERSONALIZATION_FIELD.match(str(error.get("field") or ""))
        if not match:
            return None
        message = f"SendGrid {exc.status_code}: {error.get('message', '')} ({error['field']})"
        bad.setdefault(int(match.group(1)), one_line(message))
    return bad or None
