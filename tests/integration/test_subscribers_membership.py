"""Joining, leaving and suppression on SQLite and PostgreSQL: an unsubscribe sticks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from subscribers import (
    AddOutcome,
    ConfirmOutcome,
    InvalidAddress,
    InvalidField,
    Recipient,
    add_subscriber,
    audience_page,
    blocked_among,
    confirm_subscription,
    count_audience,
    is_suppressed,
    request_subscription,
    set_preferences,
    subscriptions_of,
    suppress,
    unsubscribe,
    unsubscribe_all,
)
from subscribers.models import ConsentEvent, Subscription, Suppression

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)
TU, CW = "turkey-unpacked", "climate-weekly"


def add(session: Session, email: str, newsletter: str = TU, **kw: object) -> int:
    result = add_subscriber(session, email, newsletter, now=NOW, **kw)  # type: ignore[arg-type]
    assert result.subscriber_id is not None
    return result.subscriber_id


def events(session: Session, subscriber_id: int) -> list[tuple[str, str | None, str]]:
    rows = session.exec(
        select(ConsentEvent)
        .where(ConsentEvent.subscriber_id == subscriber_id)
        .order_by(col(ConsentEvent.id))
    )
    return [(e.action, e.newsletter, e.method) for e in rows]


def test_add_creates_then_is_idempotent(any_engine: Engine) -> None:
    with Session(any_engine) as session:
        first = add_subscriber(
            session,
            " Ayse@Example.COM ",
            TU,
            now=NOW,
            name="Ayşe",
            timezone="Europe/Istanbul",
            locale="tr",
        )
        again = add_subscriber(session, "Ayse@example.com", TU, now=NOW, name="Other")
        session.commit()
        assert first.outcome is AddOutcome.CREATED and first.status == "active"
        assert again.outcome is AddOutcome.EXISTING
        assert again.subscriber_id == first.subscriber_id
        assert first.subscriber_id is not None
        assert events(session, first.subscriber_id) == [("subscribe", TU, "cli")]
        page = audience_page(session, TU, after_id=0, limit=10)
        assert page == [
            Recipient(first.subscriber_id, "ayse@example.com", "Ayşe", "Europe/Istanbul", "tr")
        ]


def test_add_refuses_bad_input(any_engine: Engine) -> None:
    with Session(any_engine) as session:
        with pytest.raises(InvalidAddress):
            add_subscriber(session, "not-an-address", TU, now=NOW)
        with pytest.raises(InvalidField, match="timezone"):
            add_subscriber(session, "a@example.com", TU, now=NOW, timezone="Mars/Olympus")


def test_unsubscribe_sticks_and_is_idempotent(any_engine: Engine) -> None:
    with Session(any_engine) as session:
        sid = add(session, "ayse@example.com")
        add(session, "ayse@example.com", CW)
        assert (
            unsubscribe(
                session, sid, TU, now=LATER, method="one-click", ip="192.0.2.1", user_agent="Gmail"
            )
            is True
        )
        assert unsubscribe(session, sid, TU, now=LATER, method="one-click") is False
        again = add_subscriber(session, "ayse@example.com", TU, now=LATER)
        session.commit()
        assert again.outcome is AddOutcome.SKIPPED
        assert again.reason == "unsubscribed on 2026-11-25"
        subs = subscriptions_of(session, sid)
        assert subs[TU].status == "unsubscribed" and subs[TU].unsubscribed_at == LATER
        assert subs[CW].status == "active"  # leaving one newsletter leaves the others alone
        assert [r.subscriber_id for r in audience_page(session, CW, after_id=0, limit=5)] == [sid]
        assert audience_page(session, TU, after_id=0, limit=5) == []
        event = session.exec(select(ConsentEvent).where(ConsentEvent.action == "unsubscribe")).one()
        assert (event.ip, event.user_agent, event.at) == ("192.0.2.1", "Gmail", LATER)


def test_unsubscribe_without_a_subscription_still_blocks_a_later_add(any_engine: Engine) -> None:
    with Session(any_engine) as session:
        sid = add(session, "ayse@example.com", CW)
        assert unsubscribe(session, sid, TU, now=LATER, method="link") is True
        assert (
            add_subscriber(session, "ayse@example.com", TU, now=LATER).outcome is AddOutcome.SKIPPED
        )
        assert unsubscribe(session, 999_999, TU, now=LATER, method="link") is False


def test_unsubscribe_all_suppresses_every_newsletter(any_engine: Engine) -> None:
    with Session(any_engine) as session:
        sid = add(session, "ayse@example.com")
        add(session, "ayse@example.com", CW)
        assert unsubscribe_all(session, sid, now=LATER, method="preferences") is True
        assert unsubscribe_all(session, sid, now=LATER, method="preferences") is False
        session.commit()
        assert is_suppressed(session, "AYSE@EXAMPLE.com") is True  # one mailbox, any spelling
        assert is_suppressed(session, "ayse@EXAMPLE.com") is True
        assert {s.status for s in subscriptions_of(session, sid).values()} == {"unsubscribed"}
        assert sorted(events(session, sid)[2:]) == [
            ("unsubscribe_all", CW, "preferences"),
            ("unsubscribe_all", TU, "preferences"),
        ]
        other = add_subscriber(session, "ayse@example.com", "another", now=LATER)
        assert (
            other.outcome is AddOutcome.SKIPPED and other.reason == "suppressed (unsubscribed_all)"
        )


def test_suppressed_address_is_left_out_of_the_audience_and_blocked(any_engine: Engine) -> None:
    with Session(any_engine) as session:
        ids = [add(session, f"reader{i}@example.com") for i in range(5)]
        session.commit()
        assert count_audience(session, TU) == 5
        assert blocked_among(session, TU, ids) == set()
        assert (
            suppress(
                session,
                "reader2@example.com",
                "hard_bounce",
                now=LATER,
                source="sendgrid",
                detail="550 5.1.1 user unknown",
            )
            is True
        )
        assert suppress(session, "reader2@example.com", "manual", now=LATER, source="cli") is False
        # A manual block of an address leaves its subscriptions as they were.
        assert suppress(session, "reader3@example.com", "manual", now=LATER, source="cli") is True
        session.commit()
        page = audience_page(session, TU, after_id=0, limit=10)
        assert [r.subscriber_id for r in page] == [ids[0], ids[1], ids[4]]
        assert count_audience(session, TU) == 3
        assert blocked_among(session, TU, [*ids, 123_456]) == {ids[2], ids[3], 123_456}
        assert blocked_among(session, CW, ids[:2]) == set(ids[:2])  # not subscribed there
        assert blocked_among(session, TU, []) == set()
        assert subscriptions_of(session, ids[2])[TU].status == "bounced"
        assert subscriptions_of(session, ids[3])[TU].status == "active"
        # A complaint outranks the bounce; nothing outranks a complaint.
        assert suppress(session, "reader2@example.com", "complaint", now=LATER, source="x") is True
        row = session.exec(
            select(Suppression).where(Suppression.email == "reader2@example.com")
        ).one()
        assert row.reason == "complaint"


def test_audience_pages_by_keyset(any_engine: Engine) -> None:
    with Session(any_engine) as session:
        ids = [add(session, f"r{i:03d}@example.com") for i in range(25)]
        unsubscribe(session, ids[7], TU, now=LATER, method="link")
        session.commit()
        seen: list[int] = []
        after = 0
        while page := audience_page(session, TU, after_id=after, limit=10):
            assert len(page) <= 10
            seen += [r.subscriber_id for r in page]
            after = page[-1].subscriber_id
        assert seen == [i for i in ids if i != ids[7]]


def test_double_opt_in_confirm_and_resubscribe(any_engine: Engine) -> None:
    with Session(any_engine) as session:
        request = request_subscription(
            session,
            "zoe@example.net",
            CW,
            now=NOW,
            double_opt_in=True,
            ip="198.51.100.7",
            user_agent="Firefox",
        )
        assert request.send_confirmation and not request.subscribed
        sid = request.subscriber_id
        assert sid is not None
        assert count_audience(session, CW) == 0  # pending is not mailed
        assert (
            confirm_subscription(session, sid, CW, now=LATER, requested_at=NOW)
            is ConfirmOutcome.CONFIRMED
        )
        assert (
            confirm_subscription(session, sid, CW, now=LATER, requested_at=NOW)
            is ConfirmOutcome.ALREADY_ACTIVE
        )
        assert count_audience(session, CW) == 1
        # Leaves; the old confirmation link must not bring them back…
        unsubscribe_all(session, sid, now=LATER + timedelta(hours=1), method="link")
        assert (
            confirm_subscription(session, sid, CW, now=LATER + timedelta(hours=2), requested_at=NOW)
            is ConfirmOutcome.REFUSED
        )
        # …the form alone does not either, but a fresh confirmation does.
        again = request_subscription(
            session, "zoe@example.net", CW, now=LATER + timedelta(hours=3), double_opt_in=False
        )
        assert again.send_confirmation and not again.subscribed
        assert count_audience(session, CW) == 0
        assert (
            confirm_subscription(
                session,
                sid,
                CW,
                now=LATER + timedelta(hours=4),
                requested_at=LATER + timedelta(hours=3),
            )
            is ConfirmOutcome.RESUBSCRIBED
        )
        assert count_audience(session, CW) == 1
        assert not is_suppressed(session, "zoe@example.net")
        assert [a for a, _, _ in events(session, sid)] == [
            "subscribe",
            "confirm",
            "unsubscribe_all",
            "resubscribe",
        ]


def test_form_never_revives_a_bounced_address(any_engine: Engine) -> None:
    with Session(any_engine) as session:
        sid = add(session, "gone@example.com", CW)
        suppress(session, "gone@example.com", "hard_bounce", now=LATER, source="sendgrid")
        request = request_subscription(
            session, "gone@example.com", CW, now=LATER, double_opt_in=True
        )
        assert not request.send_confirmation
        assert (
            confirm_subscription(session, sid, CW, now=LATER, requested_at=LATER)
            is ConfirmOutcome.REFUSED
        )


def test_single_opt_in_form_subscribes_new_people_at_once(any_engine: Engine) -> None:
    with Session(any_engine) as session:
        request = request_subscription(session, "new@example.com", TU, now=NOW, double_opt_in=False)
        assert request.subscribed and not request.send_confirmation
        again = request_subscription(session, "new@example.com", TU, now=NOW, double_opt_in=False)
        assert not again.subscribed and not again.send_confirmation
        assert count_audience(session, TU) == 1


def test_preferences_join_and_leave(any_engine: Engine) -> None:
    with Session(any_engine) as session:
        sid = add(session, "pref@example.com", TU)
        change = set_preferences(session, sid, {CW}, [TU, CW], now=LATER, ip="192.0.2.9")
        assert (change.joined, change.left) == ([CW], [TU])
        assert {n: s.status for n, s in subscriptions_of(session, sid).items()} == {
            TU: "unsubscribed",
            CW: "active",
        }
        assert not set_preferences(session, sid, {CW}, [TU, CW], now=LATER).changed
        # Back from "unsubscribe from everything" through their own preferences page.
        unsubscribe_all(session, sid, now=LATER, method="preferences")
        change = set_preferences(session, sid, {TU}, [TU, CW], now=LATER + timedelta(minutes=1))
        assert change.joined == [TU] and not is_suppressed(session, "pref@example.com")
        suppress(session, "pref@example.com", "complaint", now=LATER, source="sendgrid")
        change = set_preferences(session, sid, {TU, CW}, [TU, CW], now=LATER)
        assert change.refused == [TU, CW] and not change.joined


def test_subscription_unique_per_newsletter(any_engine: Engine) -> None:
    with Session(any_engine) as session:
        add(session, "one@example.com")
        add(session, "one@example.com")
        assert len(session.exec(select(Subscription)).all()) == 1
