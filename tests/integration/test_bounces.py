"""Bounces over SMTP end to end: an issue sent by the real SMTP transport to aiosmtpd goes out
with signed VERP return paths (read from the envelope); bounces and complaints addressed to them,
dropped in a maildir, are read by `fetch_bounces` and suppress exactly the right addresses."""

from __future__ import annotations

import mailbox
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from digest.app import App
from digest.sending.send import send_issue
from digest.tracking.fetch import fetch_bounces
from digest.tracking.verp import decode
from subscribers.models import Suppression
from tests.integration.test_smtp import Handler, smtp_server  # noqa: F401 - the fixture
from tests.support.sending import add_audience, address, make_issue

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bounces"
DOMAIN = "bounces.example.com"


def _app(
    make_app: Callable[..., App], engine: Engine, port: int, tmp_path: Path, **bounces: object
) -> App:
    return make_app(
        engine,
        delivery={"transport": "smtp", "batch_size": 10, "concurrency": 1},
        smtp={"host": "127.0.0.1", "port": port, "security": "none", "timeout": 5},
        bounces={"domain": DOMAIN, "mailbox": str(tmp_path / "Maildir"), **bounces},
    )


def _send(app: App, engine: Engine, handler: Handler, period: str | None = None) -> dict[str, str]:
    """Send an issue; each recipient → the return path its message went out with."""
    before = len(handler.messages)
    issue_id = make_issue(engine, period=period) if period else make_issue(engine)
    report = send_issue(app, issue_id)
    assert report.issue_status == "sent"
    return {rcpts[0]: str(mail_from) for mail_from, rcpts, _ in handler.messages[before:]}


def _drop(box: mailbox.Maildir, name: str, verp: str, rcpt: str) -> None:
    text = (FIXTURES / name).read_text().replace("{VERP}", verp).replace("{RCPT}", rcpt)
    box.add(mailbox.MaildirMessage(text.replace("\n", "\r\n").encode()))


def _suppressed(engine: Engine) -> dict[str, str]:
    with Session(engine) as session:
        return {str(s.email): s.reason for s in session.exec(select(Suppression))}


def test_three_mta_styles_and_a_complaint_suppress_the_right_addresses_forged_ones_no_one(
    any_engine: Engine,
    make_app: Callable[..., App],
    smtp_server: Callable[..., tuple[Handler, int]],  # noqa: F811
    tmp_path: Path,
) -> None:
    handler, port = smtp_server()
    app = _app(make_app, any_engine, port, tmp_path)
    first, _ = add_audience(any_engine, "turkey-unpacked", 8)
    envelopes = _send(app, any_engine, handler)
    people = [address(first + i) for i in range(8)]
    for person in people:  # every message its own signed return path, From unchanged
        verp = envelopes[person]
        assert verp.startswith("bounce+d") and verp.endswith("@" + DOMAIN)
        assert decode(verp.upper(), secrets=app.settings.verification_keys(), domain=DOMAIN)
    assert all(b"From: Test Post <news@example.com>" in raw for _, _, raw in handler.messages)

    box = mailbox.Maildir(tmp_path / "Maildir", create=True)
    _drop(box, "postfix_hard.eml", envelopes[people[0]], people[0])
    _drop(box, "exchange_hard.eml", envelopes[people[1]], people[1])
    _drop(box, "exim_hard.eml", envelopes[people[2]], people[2])
    _drop(box, "arf_abuse.eml", envelopes[people[3]], people[3])
    _drop(box, "autoreply.eml", envelopes[people[4]], people[4])
    local, _, domain = envelopes[people[5]].partition("@")
    forged = local[:-4] + ("aaaa" if not local.endswith("aaaa") else "bbbb") + "@" + domain
    _drop(box, "postfix_hard.eml", forged, people[5])  # a wrong MAC
    _drop(box, "postfix_hard.eml", f"bounce+d{first + 6}@{DOMAIN}", people[6])  # unsigned
    _drop(box, "exim_hard.eml", "news@example.com", people[7])  # no VERP at all

    report = fetch_bounces(app)
    assert (report.read, report.hard, report.complaints, report.suppressed) == (8, 3, 1, 4)
    assert (report.forged, report.unknown, report.errors) == (3, 1, [])
    assert _suppressed(any_engine) == {
        people[0]: "hard_bounce",
        people[1]: "hard_bounce",
        people[2]: "hard_bounce",
        people[3]: "complaint",
    }
    processed = box.get_folder("Processed")
    assert len(processed) == 4
    left = list(box.values())
    assert len(left) == 4 and all("S" in m.get_flags() for m in left)  # left, flagged seen

    again = fetch_bounces(app)  # nothing new: what was left is flagged, the rest moved
    assert again.read == 0 and len(processed) == 4 and len(box) == 4


def test_soft_bounces_suppress_after_the_limit_in_a_row_and_a_delivery_between_resets(
    any_engine: Engine,
    make_app: Callable[..., App],
    smtp_server: Callable[..., tuple[Handler, int]],  # noqa: F811
    tmp_path: Path,
) -> None:
    handler, port = smtp_server()
    app = _app(make_app, any_engine, port, tmp_path, soft_limit=2)
    first, _ = add_audience(any_engine, "turkey-unpacked", 2)
    steady, reached = address(first), address(first + 1)
    box = mailbox.Maildir(tmp_path / "Maildir", create=True)

    one = _send(app, any_engine, handler, "2026-11-23T05:00:00+00:00")
    _drop(box, "postfix_soft.eml", one[steady], steady)
    _drop(box, "postfix_soft.eml", one[reached], reached)
    assert fetch_bounces(app).soft == 2 and _suppressed(any_engine) == {}
    # The same message bouncing again (a delay notice, then the failure) counts once.
    _drop(box, "postfix_soft.eml", one[steady].upper(), steady + " ")
    assert fetch_bounces(app).soft == 1 and _suppressed(any_engine) == {}

    two = _send(app, any_engine, handler, "2026-11-24T05:00:00+00:00")
    _drop(box, "postfix_soft.eml", two[steady], steady)  # `reached`'s second message arrived
    three = _send(app, any_engine, handler, "2026-11-25T05:00:00+00:00")
    _drop(box, "postfix_soft.eml", three[reached], reached)
    report = fetch_bounces(app)
    assert (report.soft, report.suppressed) == (2, 1)
    assert _suppressed(any_engine) == {steady: "hard_bounce"}  # two in a row; `reached` reset


@pytest.mark.parametrize("name", ["postfix_hard.eml", "exchange_hard.eml", "exim_hard.eml"])
def test_each_style_is_read_as_a_hard_bounce(name: str) -> None:
    from digest.tracking.bounces import Kind, classify, parse

    raw = (
        (FIXTURES / name)
        .read_text()
        .replace("{VERP}", "b@x.example")
        .replace("{RCPT}", "r@y.example")
    )
    assert classify(parse(raw.encode())).kind is Kind.HARD


def test_an_mbox_bounce_mailbox_is_read_and_tidied_the_same(
    any_engine: Engine,
    make_app: Callable[..., App],
    smtp_server: Callable[..., tuple[Handler, int]],  # noqa: F811
    tmp_path: Path,
) -> None:
    from digest.tracking.fetch import fetch_bounces

    handler, port = smtp_server()
    path = tmp_path / "bounces.mbox"
    app = _app(make_app, any_engine, port, tmp_path, mailbox=str(path))
    first, _ = add_audience(any_engine, "turkey-unpacked", 2)
    envelopes = _send(app, any_engine, handler)
    hard, other = address(first), address(first + 1)
    box = mailbox.mbox(path, create=True)
    for name, person in (("postfix_hard.eml", hard), ("autoreply.eml", other)):
        text = (FIXTURES / name).read_text().replace("{VERP}", envelopes[person])
        box.add(mailbox.mboxMessage(text.replace("{RCPT}", person).encode()))
    box.close()

    report = fetch_bounces(app)
    again = fetch_bounces(app)

    assert (report.read, report.hard, again.read) == (2, 1, 0)  # the left one is flagged read
    assert _suppressed(any_engine) == {hard: "hard_bounce"}
    assert len(mailbox.mbox(path)) == 1  # the auto-reply stays, for a person
    assert len(mailbox.mbox(path.with_name("bounces.mbox.processed"))) == 1
