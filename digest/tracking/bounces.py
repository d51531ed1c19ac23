"""Bounce and complaint messages → suppressions, for mail sent by SMTP with VERP.

Whom a message is about comes only from a signed VERP address (`digest.tracking.verp`): the
address the bounce was sent to (`Delivered-To`, `X-Original-To`, `Envelope-To`, `To`), or, in
a complaint or a bounce quoting the original, that original's return path. What it says:

- an ARF report (RFC 5965, `message/feedback-report`, `Feedback-Type: abuse` or none given) is a
  complaint: suppressed at once;
- a DSN (RFC 3464, `message/delivery-status`): `Action: failed` with a permanent status (5.x.x)
  is a hard bounce, suppressed at once, except a full mailbox (x.2.2) and a policy refusal
  (x.7.x, the receiver blocking the sender, not a dead address), which count as soft, like a
  4.x.x status and `Action: delayed`; `delivered`/`relayed` ends a row of soft bounces;
- anything else goes to `flufl.bounce`, which knows the many non-standard bounces (Exim's,
  qmail's, Exchange's older ones…): its permanent failures are hard, its temporary ones soft.

Soft bounces count per subscriber (`BounceScore`): one per delivery (a delayed notice and the
final failure of the same message count once), reset by a hard verdict, a `delivered` DSN, or
a delivery sent between two soft bounces that did not bounce; at `bounces.soft_limit` in a row
the address is suppressed as a hard bounce. Suppression goes through
`subscribers.suppression.suppress`, as SendGrid's events do: the subscriptions end and the
consent log says why. Each message is applied once (its SHA-256 recorded as a `WebhookEvent`),
so reading a mailbox again after a crash changes nothing.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime
from email.message import Message
from enum import StrEnum

from sqlmodel import Session, col, select

from digest.config import Settings
from digest.storage.models import BounceScore, Delivery, DeliveryStatus, Issue, WebhookEvent
from digest.tracking.verp import VerpTarget, decode
from subscribers.bulk import insert_missing
from subscribers.models import Subscriber, SuppressionReason
from subscribers.suppression import lookup_address, suppress

SOURCE = "smtp-bounce"  # the suppression's and the consent event's source/method
_ENVELOPE_HEADERS = ("delivered-to", "x-original-to", "envelope-to", "x-envelope-to", "to")
_ADDRESS = re.compile(r"[^\s<>\"',;]+@[^\s<>\"',;]+")
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
# A delivery between two soft bounces in one of these did not reach the person either.
_NOT_REACHED = (
    DeliveryStatus.FAILED,
    DeliveryStatus.SKIPPED,
    DeliveryStatus.DEFERRED,
    DeliveryStatus.BOUNCED,
    DeliveryStatus.DROPPED,
)


class Kind(StrEnum):
    HARD = "hard"
    SOFT = "soft"
    COMPLAINT = "complaint"
    DELIVERED = "delivered"
    UNKNOWN = "unknown"  # not a bounce or complaint we can read


class Outcome(StrEnum):
    APPLIED = "applied"  # recognised and about someone we mailed: done (moved)
    DUPLICATE = "duplicate"  # the same message was applied before: done (moved)
    FORGED = "forged"  # a bounce or complaint with no valid VERP address: left, flagged
    UNKNOWN = "unknown"  # not recognised: left, flagged, for a person to read


@dataclass(frozen=True)
class Verdict:
    kind: Kind
    detail: str | None = None


@dataclass(frozen=True)
class Result:
    """What became of one message."""

    outcome: Outcome
    verdict: Verdict
    suppressed: bool = False  # an address is suppressed because of it


@dataclass
class BounceReport:
    read: int = 0
    hard: int = 0
    soft: int = 0
    complaints: int = 0
    delivered: int = 0
    suppressed: int = 0
    duplicates: int = 0
    forged: int = 0
    unknown: int = 0
    errors: list[str] = field(default_factory=list)

    def count(self, result: Result) -> None:
        outcome, verdict = result.outcome, result.verdict
        self.read += 1
        self.suppressed += result.suppressed
        if outcome is Outcome.DUPLICATE:
            self.duplicates += 1
        elif outcome is Outcome.FORGED:
            self.forged += 1
        elif outcome is Outcome.UNKNOWN:
            self.unknown += 1
        else:
            name = {Kind.COMPLAINT: "complaints"}.get(verdict.kind, str(verdict.kind))
            setattr(self, name, getattr(self, name) + 1)

    def as_json(self) -> dict[str, object]:
        return asdict(self)


def parse(raw: bytes) -> Message:
    # compat32: flufl.bounce expects it, and it reads message/delivery-status as blocks.
    return email.message_from_bytes(raw)


# -- what the message says ---------------------------------------------------------------------


def classify(message: Message) -> Verdict:
    """What a bounce mailbox message says, whoever it is about."""
    report = _feedback_report(message)
    if report is not None:
        feedback = str(report.get("Feedback-Type", "abuse")).strip().lower()
        if feedback in ("abuse", "fraud", "virus", "other"):
            agent = str(report.get("User-Agent", "")).strip()
            return Verdict(Kind.COMPLAINT, f"ARF {feedback}" + (f" from {agent}" if agent else ""))
        return Verdict(Kind.UNKNOWN, f"ARF {feedback}")
    blocks = _delivery_status(message)
    if blocks:
        return _dsn_verdict(blocks)
    return _flufl_verdict(message)


def _parts(message: Message) -> list[Message]:
    return [part for part in message.walk() if isinstance(part, Message)]


def _feedback_report(message: Message) -> Message | None:
    for part in _parts(message):
        if part.get_content_type() == "message/feedback-report":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                fields: Message = payload[0]
                return fields
            if isinstance(payload, str):  # some reporters label it text: parse it ourselves
                return email.message_from_string(payload.strip() + "\n\n")
    return None


def _delivery_status(message: Message) -> list[Message]:
    for part in _parts(message):
        if part.get_content_type() == "message/delivery-status":
            payload = part.get_payload()
            if isinstance(payload, list):
                return [block for block in payload if isinstance(block, Message)]
            if isinstance(payload, str):
                text = payload.replace("\r\n", "\n").strip()
                return [email.message_from_string(b + "\n\n") for b in text.split("\n\n")]
    return []


def _dsn_verdict(blocks: list[Message]) -> Verdict:
    worst: Verdict | None = None
    rank = {Kind.DELIVERED: 0, Kind.SOFT: 1, Kind.HARD: 2}
    for block in blocks:
        action = str(block.get("Action", "")).strip().lower()
        if not action:
            continue  # the per-message block (Reporting-MTA…)
        status = _STATUS.search(str(block.get("Status", "")))
        diagnostic = " ".join(str(block.get("Diagnostic-Code", "")).split())
        code = status.group(0) if status else ""
        detail = "; ".join(x for x in (f"DSN {action} {code}".strip(), diagnostic) if x)[:500]
        if action == "failed":
            if status is None:
                kind = Kind.HARD if diagnostic[:1] == "5" else Kind.SOFT
            elif status.group(1) == "5" and (status.group(2), status.group(3)) != ("2", "2"):
                kind = Kind.SOFT if status.group(2) == "7" else Kind.HARD
            else:
                kind = Kind.SOFT
        elif action == "delayed":
            kind = Kind.SOFT
        elif action in ("delivered", "relayed", "expanded"):
            kind = Kind.DELIVERED
        else:
            continue
        if worst is None or rank[kind] > rank[worst.kind]:
            worst = Verdict(kind, detail)
    return worst or Verdict(Kind.UNKNOWN, "DSN without a recipient block")


def _flufl_verdict(message: Message) -> Verdict:
    from flufl.bounce import all_failures

    temporary, permanent = all_failures(message)
    if permanent:
        names = ", ".join(sorted(a.decode("utf-8", "replace") for a in permanent))
        return Verdict(Kind.HARD, f"permanent failure (flufl.bounce): {names}"[:500])
    if temporary:
        names = ", ".join(sorted(a.decode("utf-8", "replace") for a in temporary))
        return Verdict(Kind.SOFT, f"temporary failure (flufl.bounce): {names}"[:500])
    return Verdict(Kind.UNKNOWN)


# -- whom it is about --------------------------------------------------------------------------


def verp_candidates(message: Message) -> list[str]:
    """Addresses that may be our VERP return path, most trusted first."""
    found: list[str] = []
    for name in _ENVELOPE_HEADERS:
        for value in message.get_all(name) or []:
            found += _ADDRESS.findall(str(value))
    for part in _parts(message):
        kind = part.get_content_type()
        if kind == "message/feedback-report":
            report = _feedback_report(message)
            if report is not None:
                found += _ADDRESS.findall(str(report.get("Original-Mail-From", "")))
        elif kind in ("message/rfc822", "text/rfc822-headers"):
            payload = part.get_payload()
            original = payload[0] if isinstance(payload, list) and payload else None
            if original is None and isinstance(payload, str):
                original = email.message_from_string(payload)
            if isinstance(original, Message):
                found += _ADDRESS.findall(str(original.get("Return-Path", "")))
    return list(dict.fromkeys(a.lower() for a in found))


def target_of(message: Message, settings: Settings) -> VerpTarget | None:
    domain = settings.bounces.domain
    if not domain:
        return None
    secrets = settings.verification_keys()
    for candidate in verp_candidates(message):
        target = decode(candidate, secrets=secrets, domain=domain)
        if target is not None:
            return target
    return None


# -- applying it -------------------------------------------------------------------------------


def apply_message(session: Session, settings: Settings, raw: bytes, *, now: datetime) -> Result:
    """Apply one bounce mailbox message; the caller commits."""
    message = parse(raw)
    verdict = classify(message)
    if verdict.kind is Kind.UNKNOWN:
        return Result(Outcome.UNKNOWN, verdict)
    target = target_of(message, settings)
    if target is None:
        return Result(Outcome.FORGED, verdict)
    delivery = session.get(Delivery, target.delivery_id) if target.delivery_id else None
    subscriber_id = delivery.subscriber_id if delivery else target.subscriber_id
    address = delivery.email if delivery else None
    if address is None and subscriber_id is not None:
        address = session.exec(
            select(Subscriber.email).where(Subscriber.id == subscriber_id)
        ).first()
    if address is None or subscriber_id is None:
        return Result(Outcome.FORGED, verdict)  # signed by us, but about no one we still know
    row = {
        "provider": SOURCE,
        "event_id": "sha256:" + hashlib.sha256(raw).hexdigest(),
        "event": str(verdict.kind),
        "delivery_id": delivery.id if delivery else None,
        "received_at": now,
    }
    if insert_missing(session, WebhookEvent, [row], conflict=["provider", "event_id"]) != 1:
        return Result(Outcome.DUPLICATE, verdict)
    suppressed = _Apply(session, settings, now, delivery, subscriber_id, address, verdict).run()
    return Result(Outcome.APPLIED, verdict, suppressed)


@dataclass
class _Apply:
    session: Session
    settings: Settings
    now: datetime
    delivery: Delivery | None
    subscriber_id: int
    address: str
    verdict: Verdict

    def run(self) -> bool:
        """Apply the verdict; True if the address is suppressed because of it."""
        kind = self.verdict.kind
        if kind is Kind.COMPLAINT:
            return self._suppress(SuppressionReason.COMPLAINT, self.verdict.detail)
        if kind is Kind.HARD:
            self._status(DeliveryStatus.BOUNCED)
            self._reset()
            return self._suppress(SuppressionReason.HARD_BOUNCE, self.verdict.detail)
        if kind is Kind.DELIVERED:
            self._status(DeliveryStatus.DELIVERED)
            self._reset()
        elif kind is Kind.SOFT:
            self._status(DeliveryStatus.DEFERRED)
            in_row = self._count_soft()
            if in_row >= self.settings.bounces.soft_limit:
                detail = f"{in_row} soft bounces in a row; last: {self.verdict.detail or '-'}"
                return self._suppress(SuppressionReason.HARD_BOUNCE, detail[:500])
        return False

    def _status(self, status: DeliveryStatus) -> None:
        delivery = self.delivery
        if delivery is None:
            return
        rank = {DeliveryStatus.DEFERRED: 1, DeliveryStatus.DELIVERED: 2, DeliveryStatus.BOUNCED: 3}
        if rank[status] > rank.get(DeliveryStatus(delivery.status), 0):
            delivery.status = status
            if status is not DeliveryStatus.DELIVERED:
                delivery.error = self.verdict.detail
            delivery.updated_at = self.now
            self.session.add(delivery)

    def _reset(self) -> None:
        score = self.session.get(BounceScore, self.subscriber_id)
        if score is not None:
            self.session.delete(score)

    def _count_soft(self) -> int:
        session = self.session
        score = session.get(BounceScore, self.subscriber_id)
        if score is None:
            score = BounceScore(subscriber_id=self.subscriber_id, soft_in_row=0)
        delivery_id = self.delivery.id if self.delivery else None
        last = score.last_delivery_id
        if delivery_id is not None and last is not None:
            if delivery_id <= last:
                return score.soft_in_row  # this message (or an older one) was counted already
            if self._reached_between(last, delivery_id):
                score.soft_in_row = 0
        score.soft_in_row += 1
        if delivery_id is not None:
            score.last_delivery_id = delivery_id
        score.updated_at = self.now
        session.add(score)
        session.flush()
        return score.soft_in_row

    def _reached_between(self, after: int, before: int) -> bool:
        """Whether a delivery to this subscriber went out between two soft bounces and did not
        bounce (so the bounces are not in a row)."""
        found = self.session.exec(
            select(Delivery.id).where(
                Delivery.subscriber_id == self.subscriber_id,
                col(Delivery.id) > after,
                col(Delivery.id) < before,
                col(Delivery.status).not_in([str(s) for s in _NOT_REACHED]),
            )
        ).first()
        return found is not None

    def _suppress(self, reason: SuppressionReason, detail: str | None) -> bool:
        self.session.flush()
        issue_id = self.delivery.issue_id if self.delivery else None
        newsletter = None
        if issue_id is not None:
            issue = self.session.get(Issue, issue_id)
            newsletter = issue.newsletter if issue else None
        return suppress(
            self.session,
            lookup_address(self.address),
            reason,
            now=self.now,
            source=SOURCE,
            detail=detail,
            newsletter=newsletter,
            issue_id=issue_id,
        )
