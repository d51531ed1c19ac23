"""The outbox transport: one .eml per delivery, written atomically, indexed, idempotent."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from digest.mail.message import RecipientValues
from digest.transports import (
    OutgoingBatch,
    OutgoingMessage,
    OutgoingRecipient,
    SendOutcome,
    build_transport,
)
from digest.transports.outbox import OutboxTransport
from tests.conftest import make_settings
from tests.support.sending import outbox_messages

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def _batch(tmp_path: Path, emails: list[str], delivery_ids: list[int | None]) -> OutgoingBatch:
    settings = make_settings(tmp_path, "sqlite://")
    newsletter = settings.newsletter("turkey-unpacked")
    values = RecipientValues(settings, newsletter, b"key", NOW, name_fallback="there")
    message = OutgoingMessage(
        4, newsletter, "Weekly", "<a href='%%UNSUBSCRIBE_URL%%'>u</a>", "%%UNSUBSCRIBE_URL%%\n"
    )
    recipients = [
        OutgoingRecipient(d, n, e, None, values(n, None), f"<m{d}@example.com>" if d else None)
        for n, (e, d) in enumerate(zip(emails, delivery_ids, strict=True), start=1)
    ]
    return OutgoingBatch(message, recipients)


def test_one_file_per_delivery_and_an_index(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, "sqlite://")
    transport = build_transport(settings)
    assert isinstance(transport, OutboxTransport)
    batch = _batch(tmp_path, ["a@example.com", "b@example.com"], [11, 12])
    results = transport.send(batch)
    assert [r.outcome for r in results] == [SendOutcome.ACCEPTED] * 2
    folder = tmp_path / "outbox" / "turkey-unpacked" / "4"
    assert sorted(p.name for p in folder.iterdir()) == ["11.eml", "12.eml", "index.jsonl"]
    lines = [json.loads(line) for line in (folder / "index.jsonl").read_text().splitlines()]
    assert [(x["delivery_id"], x["to"], x["file"]) for x in lines] == [
        (11, "a@example.com", "11.eml"),
        (12, "b@example.com", "12.eml"),
    ]
    assert lines[0]["message_id"] == "<m11@example.com>"  # the delivery's own, frozen with it


def test_sending_a_delivery_again_writes_nothing_new(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, "sqlite://")
    batch = _batch(tmp_path, ["a@example.com"], [11])
    OutboxTransport(settings).send(batch)
    folder = tmp_path / "outbox" / "turkey-unpacked" / "4"
    before = (folder / "11.eml").read_bytes()
    again = OutboxTransport(settings).send(batch)  # a fresh process resuming
    assert again[0].accepted
    assert (folder / "11.eml").read_bytes() == before
    assert len((folder / "index.jsonl").read_text().splitlines()) == 1
    assert not list(folder.glob("*.tmp"))


def test_a_crash_between_file_and_index_is_repaired(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, "sqlite://")
    batch = _batch(tmp_path, ["a@example.com"], [11])
    OutboxTransport(settings).send(batch)
    folder = tmp_path / "outbox" / "turkey-unpacked" / "4"
    (folder / "index.jsonl").write_text("")  # as if killed after the rename
    OutboxTransport(settings).send(batch)
    assert len((folder / "index.jsonl").read_text().splitlines()) == 1


def test_test_sends_and_bad_addresses(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, "sqlite://")
    results = OutboxTransport(settings).send(
        _batch(tmp_path, ["editor@example.com", "not an address"], [None, 13])
    )
    assert results[0].accepted
    assert results[1].outcome is SendOutcome.FAILED and "not a usable" in (results[1].error or "")
    folder = tmp_path / "outbox" / "turkey-unpacked" / "4"
    assert [p.name.startswith("test-") for p in folder.glob("*.eml")] == [True]
    assert len(outbox_messages(folder)) == 1
