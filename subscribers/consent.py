"""The consent log: one append-only ConsentEvent for every change someone's consent went through.

Written next to the change itself (same transaction), so the log and the state never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlmodel import Session

from subscribers.bulk import bulk_insert
from subscribers.models import ConsentEvent

_LIMITS = {"ip": 64, "user_agent": 500, "detail": 500, "method": 32}


def consent_row(
    *,
    email: str | None,
    action: str,
    method: str,
    at: datetime,
    subscriber_id: int | None = None,
    newsletter: str | None = None,
    ip: str | None = None,
    user_agent: str | None = None,
    detail: str | None = None,
    issue_id: int | None = None,
) -> dict[str, Any]:
    """A ConsentEvent as a plain row (for bulk inserts), free text cut to the column sizes."""
    row: dict[str, Any] = {
        "subscriber_id": subscriber_id,
        "email": email,
        "newsletter": newsletter,
        "action": str(action),
        "method": method,
        "ip": ip,
        "user_agent": user_agent,
        "detail": detail,
        "issue_id": issue_id,
        "at": at,
    }
    for key, limit in _LIMITS.items():
        if row[key] is not None:
            row[key] = str(row[key])[:limit]
    return row


def record(session: Session, **fields: Any) -> None:
    """Append one event; see `consent_row` for the fields."""
    record_many(session, [consent_row(**fields)])


def record_many(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Append events made by `consent_row` (one executemany)."""
    bulk_insert(session, ConsentEvent, rows)
