"""Readers' data rights across every table: `digest subscribers data` (GDPR article 15) and
`digest subscribers forget` (article 17).

`held_data` gathers what `subscribers.rights.held_about` finds (subscriber, merged ids,
subscriptions, consent events, suppressions) and what the pipeline holds: deliveries with their
effective status (`digest.sending.counts`), the provider events about those deliveries, the
studio account if the address is an editor's, and form counters keyed by the address.

`forget` erases the address: `subscribers.rights.forget` for subscribers' tables (only its keyed
hash stays, in the suppression list), then deliveries keep their row, issue and status (counts
stay right) but lose the address and the name, and a last sweep replaces the address in any
text column of any table by `[forgotten]` (a row keyed by it, like a form counter, is
deleted), so columns added later are covered too. Published content (articles, sources, the
issues' texts) is left as it was: it is the newsroom's, not data held about a reader. An
editor's address is refused: remove the account first (`digest editors remove`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import String, Table, delete, func, or_, select, update
from sqlmodel import Session, SQLModel, col

import digest.storage.access
import digest.storage.models
import subscribers.models
from digest.sending import counts
from digest.storage.access import Editor, EditorSession, Throttle
from digest.storage.models import Delivery, Issue, WebhookEvent
from subscribers import rights
from subscribers.suppression import lookup_address

assert digest.storage.access and digest.storage.models and subscribers.models  # every table

_D = Delivery.__table__  # type: ignore[attr-defined]
_I = Issue.__table__  # type: ignore[attr-defined]
_W = WebhookEvent.__table__  # type: ignore[attr-defined]
_T = Throttle.__table__  # type: ignore[attr-defined]

# The newsroom's published content: never rewritten by a reader's erasure.
PUBLISHED: dict[str, set[str] | None] = {
    "article": None,
    "source": None,
    "article_topic": None,
    "issue_article": None,
    "issue": {"subject", "subject_override", "preheader", "intro", "html", "text", "web_html"},
}


class EditorAddress(Exception):
    """The address is a studio editor's: their account is removed with `digest editors remove`."""


def _deliveries_of(address: str, ids: Sequence[int]) -> Any:
    mine = func.lower(_D.c.email) == address
    return or_(mine, _D.c.subscriber_id.in_(ids)) if ids else mine


def _keyed_by(address: str) -> Any:
    """Form counters whose key ends with the address (`confirm:address:…`, `signin:account:…`)."""
    return func.lower(_T.c.key).endswith(":" + address, autoescape=True)


def held_data(
    session: Session, email: str, *, keys: Sequence[bytes] | None = None
) -> dict[str, Any]:
    """Everything held about an address, as one JSON-ready document."""
    held = rights.held_about(session, email, keys)
    address = held["address"]
    _, ids = rights.subscriber_ids(session, address)
    status = counts.effective_status()
    rows = session.execute(
        select(
            _D.c.id,
            _D.c.issue_id,
            _I.c.newsletter,
            _I.c.period,
            _D.c.email,
            _D.c.name,
            status.label("status"),
            _D.c.message_id,
            _D.c.error,
            _D.c.opened,
            _D.c.clicked,
            _D.c.updated_at,
        )
        .select_from(counts.with_batches().outerjoin(_I, _I.c.id == _D.c.issue_id))
        .where(_deliveries_of(address, ids))
        .order_by(_D.c.issue_id, _D.c.id)
    ).all()
    held["deliveries"] = [
        {
            "id": r.id,
            "issue_id": r.issue_id,
            "newsletter": r.newsletter,
            "period": r.period,
            "email": r.email,
            "name": r.name,
            "status": r.status,
            "message_id": r.message_id,
            "error": r.error,
            "opened": r.opened,
            "clicked": r.clicked,
            "updated_at": r.updated_at,
        }
        for r in rows
    ]
    delivery_ids = [r.id for r in rows]
    events = (
        session.execute(
            select(_W.c.provider, _W.c.event, _W.c.event_id, _W.c.delivery_id, _W.c.received_at)
            .where(_W.c.delivery_id.in_(delivery_ids))
            .order_by(_W.c.received_at, _W.c.id)
        ).all()
        if delivery_ids
        else []
    )
    held["webhook_events"] = [dict(e._mapping) for e in events]
    editor = session.scalars(select(Editor).where(func.lower(col(Editor.email)) == address)).first()
    held["editor"] = None
    if editor is not None:
        sessions = session.scalars(
            select(EditorSession).where(col(EditorSession.editor_id) == editor.id)
        ).all()
        held["editor"] = {
            "email": editor.email,
            "role": editor.role,
            "password": editor.password_hash is not None,
            "created_at": editor.created_at,
            "sessions": [
                {
                    "created_at": s.created_at,
                    "last_seen_at": s.last_seen_at,
                    "ip": s.ip,
                    "user_agent": s.user_agent,
                }
                for s in sessions
            ],
        }
    throttles = session.execute(select(_T).where(_keyed_by(address))).all()
    held["form_counters"] = [dict(t._mapping) for t in throttles]
    held["held"] = any(
        held[k]
        for k in (
            "subscriber",
            "subscriptions",
            "consent_events",
            "deliveries",
            "suppressions",
            "editor",
            "form_counters",
        )
    )
    return held


def export_data(
    session: Session, email: str, *, keys: Sequence[bytes] | None, now: datetime
) -> dict[str, Any]:
    """`held_data`, recorded in the consent log (a `data_export` event) when anything is held;
    an address we hold nothing about is not written down by asking."""
    held = held_data(session, email, keys=keys)
    if held["held"]:
        rights.record_export(session, email, now=now)
    return held


@dataclass(frozen=True)
class ForgetReport:
    address_hash: str
    subscriber_id: int | None
    consent_events: int
    suppressions: int
    deliveries: int
    scrubbed: dict[str, int]  # "table.column" → rows whose text named the address


def forget(session: Session, email: str, *, keys: Sequence[bytes], now: datetime) -> ForgetReport:
    """Erase an address everywhere (see the module docstring); the caller commits."""
    address = lookup_address(email)
    if session.scalars(
        select(col(Editor.id)).where(func.lower(col(Editor.email)) == address)
    ).first():
        raise EditorAddress(address)
    done = rights.forget(session, address, keys=keys, now=now)
    erased = session.execute(
        update(_D)
        .where(_deliveries_of(address, list(done.subscriber_ids)))
        .values(email="", name=None)
    ).rowcount  # type: ignore[attr-defined]
    scrubbed = sweep(session, address)
    return ForgetReport(
        done.address_hash,
        done.subscriber_id,
        done.consent_events,
        done.suppressions,
        max(erased, 0),
        scrubbed,
    )


def _text_columns(table: Table) -> list[Any]:
    skipped = PUBLISHED.get(table.name, set())
    if table.name in PUBLISHED and skipped is None:
        return []
    return [
        c for c in table.columns if isinstance(c.type, String) and c.name not in (skipped or ())
    ]


def sweep(session: Session, address: str) -> dict[str, int]:
    """Replace the address in every text column of every table (rows keyed by it: deleted)."""
    found: dict[str, int] = {}
    for table in SQLModel.metadata.sorted_tables:
        keys = list(table.primary_key.columns)
        if not keys:
            continue
        for column in _text_columns(table):
            mentions = func.lower(column).contains(address, autoescape=True)
            if column.primary_key:
                result = session.execute(delete(table).where(mentions))
                deleted = result.rowcount  # type: ignore[attr-defined]
                if deleted:
                    found[f"{table.name}.{column.name}"] = deleted
                continue
            rows = session.execute(select(*keys, column).where(mentions)).all()
            for row in rows:
                text = rights.scrub(row[-1], address)
                if text is not None and column.type.length:
                    text = text[: column.type.length]
                match = [k == row[i] for i, k in enumerate(keys)]
                session.execute(update(table).where(*match).values({column.name: text}))
            if rows:
                found[f"{table.name}.{column.name}"] = len(rows)
    return found
