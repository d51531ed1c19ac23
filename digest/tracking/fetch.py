"""`digest bounces fetch`: read the bounce mailbox once, apply each message, tidy it away.

Messages are applied in transactions of up to `_CHUNK`; only once a transaction has
committed are its messages moved (processed) or flagged (left): a crash in between leaves them
to be read again, and each is recognised by its hash and changes nothing the second time. A
message whose handling raises is left unflagged, with the error in the report, and the rest go on.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from digest.tracking.bounces import BounceReport, Outcome, Result, apply_message
from digest.tracking.mailbox import BounceMailbox, MailboxError, open_mailbox

if TYPE_CHECKING:
    from digest.app import App

log = logging.getLogger(__name__)
_CHUNK = 100


def fetch_bounces(app: App, box: BounceMailbox | None = None) -> BounceReport:
    """Read `bounces.mailbox` (or `box`) once; raises MailboxError if it cannot be opened."""
    settings = app.settings
    if box is None:
        spec = settings.bounces.mailbox
        if not spec:
            raise MailboxError("bounces.mailbox is not set")
        password = settings.bounces_password
        box = open_mailbox(spec, password=password.get_secret_value() if password else None)
    report = BounceReport()
    try:
        pending: list[tuple[str, bytes]] = []
        for item in box.unseen():
            pending.append(item)
            if len(pending) >= _CHUNK:
                _apply_chunk(app, box, pending, report)
                pending = []
        if pending:
            _apply_chunk(app, box, pending, report)
    finally:
        box.close()
    return report


def _apply_chunk(
    app: App, box: BounceMailbox, items: list[tuple[str, bytes]], report: BounceReport
) -> None:
    done: list[tuple[str, Result]] = []
    with app.session() as session:
        now = app.now()
        for key, raw in items:
            try:
                with session.begin_nested():
                    result = apply_message(session, app.settings, raw, now=now)
            except Exception as exc:
                log.exception("bounce message %s", key)
                report.errors.append(f"{key}: {exc}"[:300])
                continue
            done.append((key, result))
    for key, result in done:  # committed: now tidy the mailbox
        report.count(result)
        if result.outcome in (Outcome.APPLIED, Outcome.DUPLICATE):
            box.processed(key)
        else:
            box.leave(key)
