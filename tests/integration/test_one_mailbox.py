"""One mailbox, one subscriber: every spelling of an address is the same person, everywhere
(adding, importing, the CLI, webhook events, suppression), and migration 0003 merges the
duplicates older versions stored, keeping the strictest consent. Addresses no transport of ours
can carry (a non-ASCII part before the @-sign) are refused at input, saying why."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlmodel import Session, select

from digest.app import App
from digest.sending.events import apply_sendgrid_events
from digest.storage.db import alembic_config, current_revision, head_revision, make_engine
from digest.storage.models import Delivery
from digest.web.server import create_app
from digest.web.subscribe import confirmation_sender
from subscribers import (
    AddOutcome,
    add_subscriber,
    count_audience,
    find_subscriber,
    import_csv,
    is_suppressed,
    request_subscription,
    subscriptions_of,
    suppress,
)
from subscribers.addresses import InvalidAddress
from subscribers.membership import current_subscriber_id
from subscribers.models import ConsentEvent, Subscriber, Suppression
from tests.conftest import DEFAULT_NOW
from tests.support.cli import cli_config, digest
from tests.support.sending import mailed, make_issue, sent_issue

TU, CW = "turkey-unpacked", "climate-weekly"
NOW = DEFAULT_NOW
SPELLINGS = ("Carol@example.com", "carol@example.com", "CAROL@EXAMPLE.COM")


@pytest.fixture
def app(any_engine: Engine, make_app: Callable[..., App]) -> App:
    return make_app(any_engine)


def subscribers_in(session: Session) -> list[str]:
    return list(session.exec(select(Subscriber.email).order_by(Subscriber.id)))


def csv_import(session: Session, content: str, newsletter: str | None = CW) -> Any:
    report = import_csv(
        session,
        io.StringIO(content),
        now=NOW,
        default_newsletter=newsletter,
        known_newsletters={TU, CW},
    )
    session.commit()
    return report


# --- adding, importing, the form ------------------------------------------------------------


def test_two_spellings_added_are_one_subscriber(any_engine: Engine) -> None:
    with Session(any_engine) as session:
        first = add_subscriber(session, "Carol@example.com", TU, now=NOW)
        again = add_subscriber(session, "carol@example.com", TU, now=NOW)
        other = add_subscriber(session, "CAROL@EXAMPLE.COM", CW, now=NOW)
        session.commit()
        assert first.outcome is AddOutcome.CREATED
        assert again.outcome is AddOutcome.EXISTING
        assert first.subscriber_id == again.subscriber_id == other.subscriber_id
        assert subscribers_in(session) == ["carol@example.com"]
        found = find_subscriber(session, "cArOl@Example.Com")
        assert found is not None and found.id == first.subscriber_id


def test_a_csv_with_three_spellings_imports_one_subscriber_who_is_mailed_once(app: App) -> None:
    content = "email,name\n" + "".join(f"{s},Carol {n}\n" for n, s in enumerate(SPELLINGS))
    with app.session() as session:
        report = csv_import(session, content)
        assert report.ok and report.rows == 3
        assert report.subscribers_created == 1 and report.subscriptions_created == 1
        assert report.already_subscribed == 2
        assert subscribers_in(session) == ["carol@example.com"]
        assert count_audience(session, CW) == 1
    sent_issue(app, CW)
    assert mailed(app) == {"carol@example.com": 1}


def test_a_suppressed_address_refuses_reimport_in_another_spelling(any_engine: Engine) -> None:
    with Session(any_engine) as session:
        suppress(session, "carol@example.com", "complaint", now=NOW, source="cli")
        session.commit()
        report = csv_import(session, "email\nCarol@example.com\n")
        assert report.subscriptions_created == 0 and report.subscribers_created == 0
        assert [s.reason for s in report.skipped] == ["suppressed (complaint)"]
        assert subscribers_in(session) == []
        refused = add_subscriber(session, "CAROL@example.com", TU, now=NOW)
        assert refused.outcome is AddOutcome.SKIPPED and "suppressed" in (refused.reason or "")
        form = request_subscription(session, "Carol@Example.com", TU, now=NOW, double_opt_in=True)
        assert not form.send_confirmation and not form.subscribed


def test_an_unsubscribed_spelling_is_not_resubscribed_by_another(any_engine: Engine) -> None:
    with Session(any_engine) as session:
        sid = add_subscriber(session, "carol@example.com", TU, now=NOW).subscriber_id
        assert sid is not None
        from subscribers import unsubscribe

        assert unsubscribe(session, sid, TU, now=NOW, method="link")
        session.commit()
        again = add_subscriber(session, "Carol@Example.com", TU, now=NOW)
        assert again.outcome is AddOutcome.SKIPPED and again.subscriber_id == sid
        report = csv_import(session, "email\nCAROL@example.com\n", newsletter=TU)
        assert report.subscriptions_created == 0 and len(report.skipped) == 1
        assert subscriptions_of(session, sid)[TU].status == "unsubscribed"


# --- webhook events ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        {"event": "spamreport"},
        {"event": "bounce", "type": "bounce", "reason": "550 5.1.1 no such user"},
        {"event": "dropped", "reason": "Bounced Address"},
    ],
    ids=["complaint", "hard-bounce", "dropped-bounced-address"],
)
def test_an_event_for_one_spelling_suppresses_and_stops_mail_to_the_mailbox(
    app: App, event: dict[str, Any]
) -> None:
    with app.session() as session:
        sid = add_subscriber(session, "carol@example.com", TU, now=NOW).subscriber_id
        add_subscriber(session, "dave@example.com", TU, now=NOW)
    first = sent_issue(app, TU)
    assert mailed(app) == {"carol@example.com": 1, "dave@example.com": 1}
    with app.session() as session:
        delivery = session.exec(
            select(Delivery).where(Delivery.issue_id == first, Delivery.subscriber_id == sid)
        ).one()
        raw = {
            **event,
            "email": "CAROL@EXAMPLE.COM",
            "sg_event_id": f"ev-{event['event']}",
            "timestamp": int(NOW.timestamp()),
            "digest_delivery_id": str(delivery.id),
            "digest_issue_id": str(first),
            "digest_newsletter": TU,
        }
        result = apply_sendgrid_events(session, [raw], now=NOW)
        session.commit()
        assert result.applied == 1, result
        assert is_suppressed(session, "carol@example.com")
        assert sid is not None and subscriptions_of(session, sid)[TU].status != "active"
        assert count_audience(session, TU) == 1
        session.refresh(delivery)
        if event["event"] != "spamreport":  # the event reached the delivery: same mailbox
            assert delivery.status in ("bounced", "dropped")
    sent_issue(app, TU, period="2026-11-30T05:00:00+00:00")
    assert mailed(app) == {"carol@example.com": 1, "dave@example.com": 2}


def test_an_unsubscribe_event_in_another_spelling_finds_the_subscriber(any_engine: Engine) -> None:
    with Session(any_engine) as session:
        sid = add_subscriber(session, "carol@example.com", CW, now=NOW).subscriber_id
        raw = {"event": "group_unsubscribe", "email": "Carol@Example.COM", "sg_event_id": "g1"}
        result = apply_sendgrid_events(session, [{**raw, "digest_newsletter": CW}], now=NOW)
        session.commit()
        assert result.applied == 1
        assert sid is not None and subscriptions_of(session, sid)[CW].status == "unsubscribed"
        assert subscribers_in(session) == ["carol@example.com"]


# --- the command line -------------------------------------------------------------------------


@pytest.fixture
def config(any_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    yield cli_config(tmp_path / "digest.toml", any_engine, monkeypatch)


def test_the_cli_treats_every_spelling_as_one_subscriber(
    config: Path, any_engine: Engine, tmp_path: Path
) -> None:
    code, out, err = digest(config, "subscribers", "add", "Carol@example.com", "-n", TU)
    assert code == 0, err
    assert "carol@example.com: subscribed to turkey-unpacked" in out
    code, out, _ = digest(config, "subscribers", "add", "CAROL@example.com", "-n", TU)
    assert code == 0 and "already subscribed" in out
    csv = tmp_path / "people.csv"
    csv.write_text("email,newsletters\ncarol@EXAMPLE.com,climate-weekly\n", encoding="utf-8")
    code, out, err = digest(config, "subscribers", "import", str(csv))
    assert code == 0, err
    assert "(0 new subscribers)" in out
    code, out, err = digest(config, "subscribers", "unsubscribe", "CAROL@EXAMPLE.COM", "--all")
    assert code == 0, err
    assert "carol@example.com unsubscribed from every newsletter" in out
    with Session(any_engine) as session:
        assert subscribers_in(session) == ["carol@example.com"]
        assert is_suppressed(session, "Carol@example.com")
    code, out, _ = digest(config, "subscribers", "add", "carol@example.com", "-n", CW)
    assert code == 1  # suppressed: the CLI never re-subscribes


def test_the_cli_refuses_a_mailbox_name_no_transport_can_carry(
    config: Path, any_engine: Engine
) -> None:
    code, _, err = digest(config, "subscribers", "add", "Ayşe@example.com", "-n", TU)
    assert code == 1
    assert "ş" in err and "before the @-sign" in err and "non-ASCII" in err
    with Session(any_engine) as session:
        assert subscribers_in(session) == []


# --- what the transport cannot carry ----------------------------------------------------------


def test_a_csv_line_with_a_non_ascii_mailbox_name_is_a_bad_line_the_rest_imported(
    any_engine: Engine,
) -> None:
    with Session(any_engine) as session:
        report = csv_import(session, "email\nayşe@example.com\nayse@exämple.com\n")
        assert [(e.line, e.field) for e in report.errors] == [(2, "email")]
        assert "ş" in report.errors[0].reason and "non-ASCII" in report.errors[0].reason
        # A Unicode domain is fine: it travels as IDNA (xn--…).
        assert subscribers_in(session) == ["ayse@exämple.com"]


def test_the_form_refuses_a_mailbox_name_no_transport_can_carry(app: App) -> None:
    sent: list[tuple[Any, ...]] = []
    web = create_app(app)
    web.dependency_overrides[confirmation_sender] = lambda: lambda *a, **k: sent.append(a)
    client = TestClient(web, base_url="https://news.example.com", follow_redirects=False)
    answer = client.post(f"/subscribe/{CW}", data={"email": "Ayşe@example.com"})
    assert answer.status_code == 400, answer.text
    assert "Please check your email address" in answer.text
    assert "ş" in answer.text and "non-ASCII" in answer.text
    assert sent == []
    with app.session() as session:
        assert subscribers_in(session) == []
        assert list(session.exec(select(ConsentEvent))) == []
    # Two spellings are one mailbox: one subscriber, and one confirmation per cooldown.
    for spelling in ("Zoe@Example.NET", "zoe@example.net", "ZOE@example.net"):
        answer = client.post(f"/subscribe/{CW}", data={"email": spelling})
        assert answer.status_code == 200 and "Check your inbox" in answer.text, answer.text
    assert [a[1] for a in sent] == ["zoe@example.net"]
    with app.session() as session:
        assert subscribers_in(session) == ["zoe@example.net"]


def test_input_refusal_names_the_characters(any_engine: Engine) -> None:
    with Session(any_engine) as session, pytest.raises(InvalidAddress, match="ü"):
        add_subscriber(session, "müller@example.com", TU, now=NOW)


# --- migration 0003 ---------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def engine_at_0002(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A fresh database migrated to revision 0002 only (before one mailbox, one subscriber)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    engine = make_engine(url)
    command.upgrade(alembic_config(engine), "0002")
    assert current_revision(engine) == "0002"
    yield engine
    engine.dispose()


T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _stamp(engine: Engine, moment: datetime) -> object:
    """A timestamp as UTCDateTime stores it (naive UTC)."""
    naive = moment.astimezone(UTC).replace(tzinfo=None)
    return naive if engine.dialect.name == "postgresql" else naive.isoformat(sep=" ")


def _insert(engine: Engine, table: str, rows: list[dict[str, Any]]) -> None:
    columns = list(rows[0])
    statement = text(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})"
    )
    with engine.begin() as connection:
        connection.execute(statement, rows)


def _old_rows(engine: Engine) -> None:
    """What the code before 0003 stored. Its `normalize_email` lower-cased only the domain and
    nothing compared addresses case-insensitively, so real old code paths would have written
    exactly these rows (the new code cannot: it lower-cases), hence plain SQL inserts."""
    s = lambda days: _stamp(engine, T0 + timedelta(days=days))  # noqa: E731
    people = [
        (1, "carol@example.com", "Caroline", "Europe/Paris"),
        (2, "Carol@example.com", "Carol", None),
        (3, "CAROL@example.com", None, "Asia/Tokyo"),
        (4, "Dave@example.com", None, None),
        (5, "erin@example.com", None, None),
        # The lower id is spelled lower-case: the kept row (the highest id) takes its address.
        (6, "finn@example.com", None, None),
        (7, "Finn@example.com", None, None),
    ]
    _insert(
        engine,
        "subscriber",
        [
            {"id": i, "email": e, "name": n, "timezone": tz, "created_at": s(i)}
            for i, e, n, tz in people
        ],
    )
    sub = lambda sid, newsletter, status: {  # noqa: E731
        "subscriber_id": sid,
        "newsletter": newsletter,
        "status": status,
        "source": "csv",
        "created_at": s(sid),
    }
    _insert(
        engine,
        "subscription",
        [
            sub(1, TU, "active"),
            sub(2, TU, "unsubscribed"),  # an unsubscribe beats the other spelling's active
            sub(1, CW, "pending"),
            sub(3, CW, "active"),  # active beats pending: the mailbox's consent is proven
            sub(3, "other", "complained"),  # only the duplicate has it: moved over
            sub(4, TU, "active"),
            sub(5, TU, "active"),
            sub(6, TU, "bounced"),
            sub(7, TU, "active"),
        ],
    )
    _insert(
        engine,
        "consent_event",
        [
            {"subscriber_id": i, "email": e, "newsletter": TU, "action": "subscribe"}
            | {"method": "csv", "at": s(i)}
            for i, e, *_ in people[:3]
        ],
    )
    delivery = lambda issue, sid, email: {  # noqa: E731
        "issue_id": issue,
        "subscriber_id": sid,
        "email": email,
        "status": "accepted",
        "opened": False,
        "clicked": False,
        "updated_at": s(9),
    }
    _insert(
        engine,
        "delivery",
        [
            delivery(10, 1, "carol@example.com"),  # the kept id 3 has one of issue 10: stays
            delivery(10, 2, "Carol@example.com"),  # likewise
            delivery(10, 3, "CAROL@example.com"),
            delivery(11, 1, "carol@example.com"),  # moves to id 3
            delivery(12, 2, "Carol@example.com"),  # moves to id 3
        ],
    )
    supp = lambda email, reason, days: {  # noqa: E731
        "email": email,
        "reason": reason,
        "source": "cli",
        "created_at": s(days),
    }
    _insert(
        engine,
        "suppression",
        [
            supp("FRANK@example.com", "unsubscribed_all", 1),  # the earliest
            supp("Frank@example.com", "manual", 2),
            supp("frank@example.com", "complaint", 3),  # the strictest
            supp("Gina@example.com", "hard_bounce", 4),
            supp("hal@example.com", "manual", 5),
        ],
    )
    if engine.dialect.name == "postgresql":
        with engine.begin() as connection:
            connection.execute(text("SELECT setval(pg_get_serial_sequence('subscriber', 'id'), 7)"))


def test_migration_merges_duplicates_keeping_the_strictest_consent(
    engine_at_0002: Engine, make_app: Callable[..., App]
) -> None:
    engine = engine_at_0002
    _old_rows(engine)
    command.upgrade(alembic_config(engine), "head")
    assert current_revision(engine) == head_revision(engine)
    with Session(engine) as session:
        people = {s.id: s for s in session.exec(select(Subscriber))}
        # The highest id of each group is kept: SQLite gives a deleted id above the largest to
        # the next new row, and an old id's links must never reach someone else.
        assert {i: p.email for i, p in people.items()} == {
            3: "carol@example.com",
            4: "dave@example.com",
            5: "erin@example.com",
            7: "finn@example.com",
        }
        carol = people[3]
        # Set profile fields kept, empty ones filled from the duplicates (newest first); the
        # subscriber dates from the earliest spelling.
        assert (carol.name, carol.timezone, carol.locale) == ("Carol", "Asia/Tokyo", None)
        assert carol.created_at == T0 + timedelta(days=1)  # id 1's
        assert {n: s.status for n, s in subscriptions_of(session, 3).items()} == {
            TU: "unsubscribed",
            CW: "active",
            "other": "complained",
        }
        assert {n: s.status for n, s in subscriptions_of(session, 7).items()} == {TU: "bounced"}
        events = session.exec(select(ConsentEvent.subscriber_id, ConsentEvent.email)).all()
        assert sorted(events) == [
            (3, "CAROL@example.com"),  # the log keeps what was recorded; only the id moves
            (3, "Carol@example.com"),
            (3, "carol@example.com"),
        ]
        deliveries = session.exec(select(Delivery.issue_id, Delivery.subscriber_id)).all()
        assert sorted(deliveries) == [(10, 1), (10, 2), (10, 3), (11, 3), (12, 3)]
        suppressions = {
            s.email: (s.reason, s.created_at) for s in session.exec(select(Suppression))
        }
        assert suppressions == {
            "frank@example.com": ("complaint", T0 + timedelta(days=1)),
            "gina@example.com": ("hard_bounce", T0 + timedelta(days=4)),
            "hal@example.com": ("manual", T0 + timedelta(days=5)),
        }
        # Links signed for a merged-away id (in emails already sent) reach the kept subscriber.
        assert [current_subscriber_id(session, i) for i in (1, 2, 3, 6, 7, 99)] == [
            3, 3, 3, 7, 7, None,
        ]  # fmt: skip
    # The new code on the migrated database: any spelling is the one, strictest, subscriber.
    app = make_app(engine)
    with app.session() as session:
        assert (
            add_subscriber(session, "CAROL@EXAMPLE.COM", TU, now=NOW).outcome is AddOutcome.SKIPPED
        )
        assert (
            add_subscriber(session, "Finn@Example.com", TU, now=NOW).outcome is AddOutcome.SKIPPED
        )
        assert is_suppressed(session, "Frank@Example.com") and is_suppressed(
            session, "GINA@example.com"
        )
        assert (
            add_subscriber(session, "frank@example.com", TU, now=NOW).outcome is AddOutcome.SKIPPED
        )
        assert count_audience(session, TU) == 2  # dave, erin
        assert count_audience(session, CW) == 1  # carol
        new = add_subscriber(session, "Ivy@example.com", TU, now=NOW)
        # A new subscriber never takes a merged-away id (their old links must not reach it).
        assert new.subscriber_id is not None and new.subscriber_id > 7
        assert current_subscriber_id(session, 6) == 7
    issue = make_issue(engine, TU, period="2026-11-30T05:00:00+00:00")
    from digest.sending.send import send_issue

    send_issue(app, issue)
    assert mailed(app) == {"dave@example.com": 1, "erin@example.com": 1, "ivy@example.com": 1}


def test_migration_on_a_database_without_duplicates_changes_only_case(
    engine_at_0002: Engine,
) -> None:
    _insert(
        engine_at_0002,
        "subscriber",
        [
            {"id": 1, "email": "Solo@example.com", "created_at": _stamp(engine_at_0002, T0)},
            {"id": 2, "email": "plain@example.com", "created_at": _stamp(engine_at_0002, T0)},
        ],
    )
    command.upgrade(alembic_config(engine_at_0002), "head")
    with Session(engine_at_0002) as session:
        assert subscribers_in(session) == ["solo@example.com", "plain@example.com"]
        assert current_subscriber_id(session, 1) == 1


def test_an_old_emails_link_to_a_merged_subscriber_still_unsubscribes(
    engine_at_0002: Engine, make_app: Callable[..., App]
) -> None:
    """Subscriber 1 was merged into 3; the one-click link in an email sent to 1 must still work
    (RFC 8058), and act on 3."""
    from fastapi.testclient import TestClient

    from digest.web.server import create_app
    from subscribers.tokens import Purpose, make_token

    engine = engine_at_0002
    _old_rows(engine)
    command.upgrade(alembic_config(engine), "head")
    app = make_app(engine)
    token = make_token(
        app.signing_key(), subscriber_id=1, newsletter=CW, purpose=Purpose.UNSUBSCRIBE,
        issued_at=app.now(),
    )  # fmt: skip
    answer = TestClient(create_app(app)).post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 200
    with Session(engine) as session:
        assert subscriptions_of(session, 3)[CW].status == "unsubscribed"
