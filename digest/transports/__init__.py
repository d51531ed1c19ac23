"""Mail transports behind one small interface: SendGrid, SMTP and the outbox directory.

A transport takes an `OutgoingBatch` (one shared message plus up to `max_batch_size`
recipients, each with the values of the per-recipient tokens) and answers with one
`SendResult` per recipient, in order. It never touches the database: the delivery ledger in
`digest.sending.ledger` decides what to send and records what came back. Three outcomes only:

- accepted: the provider took responsibility for the message (SendGrid 202, SMTP 250, file
  written). Not "delivered": that comes later, from provider events.
- failed: the provider refused it and said so; sending it again will not help by itself.
- unknown: the request may or may not have gone through (a response lost to a read timeout or a
  dropped connection). Resending could mail the person twice, so the operator decides.

May import `mail` and below; never the database (checked by `tests/unit/test_boundaries.py`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from digest.config import NewsletterConfig, Settings, TransportName
from digest.rendering.personalize import LEGACY, Tokens
from digest.transports.retry import RetryPolicy

if TYPE_CHECKING:
    import ssl

__all__ = [
    "OutgoingBatch",
    "OutgoingMessage",
    "OutgoingRecipient",
    "RetryPolicy",
    "SendOutcome",
    "SendResult",
    "Transport",
    "TransportError",
    "build_transport",
]


class SendOutcome(StrEnum):
    ACCEPTED = "accepted"
    FAILED = "failed"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class OutgoingMessage:
    """What every recipient of a batch shares: the issue's subject and bodies, still tokenised."""

    issue_id: int | None
    newsletter: NewsletterConfig
    subject: str
    html: str
    text: str
    # Message-level extra headers (X-Digest-Issue…); per-recipient ones are built by transports.
    headers: Mapping[str, str] = field(default_factory=dict)
    date: datetime | None = None  # the Date header where the transport writes one (SMTP, outbox)
    # The issue's token names (`digest.mail.message.tokens_of`): only these are filled.
    tokens: Tokens = LEGACY
    # A one-off message (no issue): the outbox folder it goes in under the newsletter's,
    # e.g. "confirmations"; None: "tests" (editors' test sends). Other transports ignore it.
    outbox_folder: str | None = None


# Not frozen: a frozen dataclass's __init__ is ~4x slower, and a send builds an
# OutgoingRecipient and a SendResult per recipient (a million in a large send). Treat as values.
@dataclass(slots=True)
class OutgoingRecipient:
    delivery_id: int | None  # None for a test send, which has no ledger row
    subscriber_id: int
    email: str
    name: str | None
    values: Mapping[str, str]  # the issue's token → value (see digest.rendering.personalize)
    # The delivery's Message-ID, drawn when the audience was frozen: the same on every resend.
    # None (a test send): a fresh one per message.
    message_id: str | None = None


@dataclass(frozen=True)
class OutgoingBatch:
    message: OutgoingMessage
    recipients: Sequence[OutgoingRecipient]
    batch_id: int | None = None


@dataclass(slots=True)
class SendResult:
    """What the transport knows about one recipient after `send`."""

    email: str
    outcome: SendOutcome
    message_id: str | None = None  # SendGrid X-Message-Id, SMTP queue id…
    error: str | None = None  # the provider's words, for failed and unknown

    @property
    def accepted(self) -> bool:
        return self.outcome is SendOutcome.ACCEPTED


class TransportError(Exception):
    """A transport cannot work at all (bad configuration, missing key): nothing was sent."""


class Transport(Protocol):
    name: str
    max_batch_size: int

    def send(self, batch: OutgoingBatch) -> list[SendResult]:
        """One result per recipient of `batch`, in the same order. Never raises for a refusal."""
        ...

    def close(self) -> None: ...


def all_results(
    recipients: Sequence[OutgoingRecipient],
    outcome: SendOutcome,
    *,
    message_id: str | None = None,
    error: str | None = None,
) -> list[SendResult]:
    return [SendResult(r.email, outcome, message_id, error) for r in recipients]


def recipient_mime(
    settings: Settings, message: OutgoingMessage, recipient: OutgoingRecipient
) -> EmailMessage:
    """The MIME message of one recipient, for transports that send whole messages."""
    from digest.mail.message import build_mime
    from digest.mail.message import message_id as make_message_id

    headers = {"Message-ID": recipient.message_id or make_message_id(settings), **message.headers}
    if message.date is not None:
        headers["Date"] = format_datetime(message.date.astimezone(UTC))
    if recipient.delivery_id is not None:
        headers["X-Digest-Delivery"] = str(recipient.delivery_id)
    return build_mime(
        settings=settings,
        newsletter=message.newsletter,
        subject=message.subject,
        html=message.html,
        text=message.text,
        to_email=recipient.email,
        to_name=recipient.name,
        values=recipient.values,
        headers=headers,
        tokens=message.tokens,
    )


def build_transport(
    settings: Settings,
    *,
    policy: RetryPolicy | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Transport:
    """The transport named by `[delivery] transport`, configured from `settings`."""
    policy = policy or RetryPolicy(max_attempts=settings.delivery.max_retries + 1)
    name = settings.delivery.transport
    if name == TransportName.SENDGRID:
        from digest.transports.sendgrid import SendGridTransport

        return SendGridTransport.from_settings(settings, policy=policy)
    if name == TransportName.SMTP:
        from digest.transports.smtp import SmtpTransport

        return SmtpTransport.from_settings(settings, policy=policy, ssl_context=ssl_context)
    from digest.transports.outbox import OutboxTransport

    return OutboxTransport.from_settings(settings)
