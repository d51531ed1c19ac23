"""The outbox: every message written as an .eml file instead of being mailed (the default).

Layout: `<outbox_dir>/<newsletter>/<issue id>/<delivery id>.eml`, plus `index.jsonl` in the
same directory, one JSON line per message (delivery, recipient, subject, file, Message-ID).
Test sends go to `<outbox_dir>/<newsletter>/tests/`, other one-off messages to the folder they
name (`OutgoingMessage.outbox_folder`): `confirmations/` (double opt-in), `studio/sign-in/`
(editors' sign-in links). Each file is written to a temporary name
and renamed, so a reader never sees half a message; a delivery whose file already exists is not
written again (a resumed send re-delivers nothing), which makes the outbox idempotent by
delivery id. Results carry no message id: the file name and the Message-ID header
(`digest.mail.message.message_id`) both follow from the delivery id. Like rss2email's maildir
transport, it is how a newsroom tries digest without a mail provider, and what the demo and
most tests read back.

A directory that cannot be made (the path is a file, no permission) or a file that cannot be
written (disk full, quota) fails the recipients concerned with one line naming the path, logged
once per batch; the temporary file is removed. Nothing written means the batch failed (never
unknown: nothing can have gone out); files already written stay accepted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import uuid
from pathlib import Path

from digest.config import Settings
from digest.transports import (
    OutgoingBatch,
    OutgoingMessage,
    OutgoingRecipient,
    SendOutcome,
    SendResult,
    recipient_mime,
)

log = logging.getLogger(__name__)

INDEX = "index.jsonl"
TESTS_DIR = "tests"


class OutboxTransport:
    name = "outbox"
    max_batch_size = 1000

    def __init__(self, settings: Settings, directory: str | Path | None = None) -> None:
        self.settings = settings
        self.root = Path(directory or settings.delivery.outbox_dir)
        self._lock = threading.Lock()
        self._indexed: dict[Path, set[int]] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> OutboxTransport:
        return cls(settings)

    def close(self) -> None:
        self._indexed.clear()

    def directory(self, message: OutgoingMessage) -> Path:
        if message.issue_id is not None:
            return self.root / message.newsletter.slug / str(message.issue_id)
        return self.root / message.newsletter.slug / (message.outbox_folder or TESTS_DIR)

    def send(self, batch: OutgoingBatch) -> list[SendResult]:
        folder = self.directory(batch.message)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            error = f"outbox: cannot create the directory {folder}: {_reason(exc)}"
            log.error("%s", error)
            return [SendResult(r.email, SendOutcome.FAILED, None, error) for r in batch.recipients]
        results = []
        logged = False
        for recipient in batch.recipients:
            result = self._write(folder, batch.message, recipient)
            if result.error and result.error.startswith("outbox:") and not logged:
                log.error("%s", result.error)  # once per batch: a full disk fails every file
                logged = True
            results.append(result)
        return results

    def _write(
        self, folder: Path, message: OutgoingMessage, recipient: OutgoingRecipient
    ) -> SendResult:
        if recipient.delivery_id is None:
            name = f"test-{uuid.uuid4().hex[:12]}.eml"
        else:
            name = f"{recipient.delivery_id}.eml"
        path = folder / name
        if recipient.delivery_id is not None and path.exists():
            self._index(folder, recipient, message, name, None)  # in case a crash beat it
            return SendResult(recipient.email, SendOutcome.ACCEPTED)
        try:
            mime = recipient_mime(self.settings, message, recipient)
        except ValueError as exc:
            return SendResult(recipient.email, SendOutcome.FAILED, None, str(exc))
        tmp = folder / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            tmp.write_bytes(mime.as_bytes())
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            error = f"outbox: cannot write {path}: {_reason(exc)}"
            return SendResult(recipient.email, SendOutcome.FAILED, None, error)
        try:
            self._index(folder, recipient, message, name, str(mime["Message-ID"]))
        except OSError as exc:  # the message is written; a resend re-indexes it (see above)
            log.warning("outbox: cannot append to %s: %s", folder / INDEX, _reason(exc))
        return SendResult(recipient.email, SendOutcome.ACCEPTED)

    def _index(
        self,
        folder: Path,
        recipient: OutgoingRecipient,
        message: OutgoingMessage,
        name: str,
        message_id: str | None,
    ) -> None:
        line = json.dumps(
            {
                "delivery_id": recipient.delivery_id,
                "subscriber_id": recipient.subscriber_id,
                "to": recipient.email,
                "subject": message.subject,
                "file": name,
                "message_id": message_id,
            },
            ensure_ascii=False,
        )
        with self._lock:
            if recipient.delivery_id is not None:
                known = self._indexed.get(folder)
                if known is None:
                    known = self._indexed[folder] = _read_index(folder / INDEX)
                if recipient.delivery_id in known:
                    return
                known.add(recipient.delivery_id)
            # One write() of one line with O_APPEND: lines from several senders do not mix.
            with open(folder / INDEX, "a", encoding="utf-8") as handle:
                handle.write(line + "\n")


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _read_index(path: Path) -> set[int]:
    ids: set[int] = set()
    if not path.exists():
        return ids
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            try:
                value = json.loads(line).get("delivery_id")
            except (ValueError, AttributeError):
                continue  # a line cut by a crash: the file it named is still there
            if isinstance(value, int):
                ids.add(value)
    return ids
