"""`POST /webhooks/sendgrid`: SendGrid's signed Event Webhook.

Every request must carry a valid ECDSA signature (`X-Twilio-Email-Event-Webhook-Signature`)
over its timestamp header followed by the raw body, checked with the sendgrid library's
`EventWebhook` against `SENDGRID_WEBHOOK_PUBLIC_KEY`, and a timestamp within five minutes of our
clock (a captured request cannot be replayed later). Anything else gets 403 and changes nothing.
A verified batch is applied in one transaction (`digest.sending.events`); on an error nothing
is kept and SendGrid retries the batch later.
"""

from __future__ import annotations

import binascii
import logging
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sendgrid.helpers.eventwebhook import EventWebhook, EventWebhookHeader

from digest.app import App
from digest.sending.events import apply_sendgrid_events
from digest.web.deps import JsonBodyError, app_of, parse_json

log = logging.getLogger(__name__)
router = APIRouter()

MAX_SKEW = timedelta(minutes=5)
MAX_BODY_BYTES = 8 * 1024 * 1024  # SendGrid batches are far smaller; refuse before verifying


class WebhookKeyError(Exception):
    """The configured public key cannot be used (a configuration problem, not the caller's)."""


@router.post("/webhooks/sendgrid")
async def sendgrid_events(request: Request) -> JSONResponse:
    app = app_of(request)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return _answer(413, "request body too large")
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        return _answer(413, "request body too large")
    key = app.settings.sendgrid_webhook_public_key
    if not key:
        log.error("SendGrid webhook called but SENDGRID_WEBHOOK_PUBLIC_KEY is not set")
        return _answer(503, "webhook verification key not configured")
    try:
        refusal = signature_problem(
            key,
            body,
            request.headers.get(EventWebhookHeader.SIGNATURE),
            request.headers.get(EventWebhookHeader.TIMESTAMP),
            now=app.now(),
        )
    except WebhookKeyError as exc:
        log.error("SENDGRID_WEBHOOK_PUBLIC_KEY is not usable: %s", exc)
        return _answer(503, "webhook verification key not usable")
    if refusal:
        log.warning("refused a SendGrid webhook request: %s", refusal)
        return _answer(403, refusal)
    try:
        events = parse_json(body)
    except JsonBodyError as exc:
        return _answer(400, str(exc))
    if not isinstance(events, list):
        return _answer(400, "body is not a JSON array of events")
    result = await run_in_threadpool(_apply, app, events)
    return JSONResponse(result)


def _apply(app: App, events: list[Any]) -> dict[str, int]:
    with app.session() as session:
        result = apply_sendgrid_events(session, events, now=app.now())
    log.info("SendGrid webhook: %s", result)
    return result.as_json()


def signature_problem(
    public_key: str, body: bytes, signature: str | None, timestamp: str | None, *, now: datetime
) -> str | None:
    """Why this request is not a genuine, fresh SendGrid request; None when it is."""
    if not signature or not timestamp:
        return "missing signature or timestamp header"
    if not (timestamp.isascii() and timestamp.isdigit()):
        return "timestamp is not a Unix time"
    if abs(now.timestamp() - int(timestamp)) > MAX_SKEW.total_seconds():
        return "timestamp is more than 5 minutes off"
    try:
        payload = body.decode("utf-8")
    except UnicodeDecodeError:
        return "body is not UTF-8"
    verifier = EventWebhook()
    try:
        valid = verifier.verify_signature(
            payload, signature, timestamp, public_key=_key(public_key)
        )
    except (binascii.Error, ValueError, TypeError):  # a signature that is not base64 DER
        valid = False
    return None if valid else "signature does not verify"


@lru_cache(maxsize=4)
def _key(public_key: str) -> ec.EllipticCurvePublicKey:
    try:
        key = EventWebhook().convert_public_key_to_ecdsa(public_key.strip())
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise WebhookKeyError("not a base64 DER public key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise WebhookKeyError("not an elliptic-curve (ECDSA) public key")
    return key


def _answer(status: int, error: str) -> JSONResponse:
    return JSONResponse({"error": error}, status_code=status)
