"""CSV import and export: bad lines reported one by one, the rest imported, re-import harmless."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, text
from sqlmodel import Session, select

from subscribers import (
    count_audience,
    csv_io,
    export_csv,
    find_subscriber,
    import_csv,
    subscriptions_of,
    suppress,
    unsubscribe,
    unsubscribe_all,
)
from subscribers.models import ConsentEvent, Subscriber, Subscription

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=1)
KNOWN = {"turkey-unpacked", "climate-weekly"}
SAMPLE = Path(__file__).resolve().parents[2] / "config" / "sample" / "subscribers.csv"

MIXED = """\
Email,Full Name,Newsletters,TZ,Language,Favourite colour
ayse@example.com,Ayşe Yılmaz,turkey-unpacked,Europe/Istanbul,tr,blue
not-an-email,Broken,turkey-unpacked,,,
zoe@example.net,Zoë,climate-weekly;turkey-unpacked,Europe/London,en_GB,
bad-tz@example.com,Bad Zone,climate-weekly,Mars/Olympus,,
,No Address,climate-weekly,,,
unknown-list@example.com,,cooking-weekly,,,

lucas@example.org,"Moreau, Lucas",climate-weekly,,fr,
nolist@example.com,No List,,,,
too,many,fields,here,x,y,z
"multi
line@example.com",Multi Line,climate-weekly,,,
"""


def run(session: Session, text: str, **kw: object):  # type: ignore[no-untyped-def]
    options: dict[str, object] = {"now": NOW, "known_newsletters": KNOWN, "file_name": "people.csv"}
    options.update(kw)
    return import_csv(session, io.StringIO(text), **options)  # type: ignore[arg-type]


def test_bad_lines_are_each_reported_and_the_rest_imported(any_engine: Engine) -> None:
    with Session(any_engine) as session:
        report = run(session, MIXED)
        session.commit()
        errors = [(e.line, e.field) for e in report.errors]
        assert errors == [
            (3, "email"),
            (5, "timezone"),
            (6, "email"),
            (7, "newsletters"),
            (10, "newsletters"),
            (11, "row"),
            (12, "email"),
        ]
        reasons = {e.line: e.reason for e in report.errors}
        assert "not-an-email" in reasons[3] and "@" in reasons[3]
        assert "Mars/Olympus" in reasons[5]
        assert reasons[6] == "missing"
        assert "cooking-weekly" in reasons[7] and "climate-weekly" in reasons[7]
        assert str(report.errors[0]).startswith("line 3: email: ")
        assert report.ignored_columns == ["Favourite colour"]
        assert report.rows == 10
        assert report.subscribers_created == 3
        assert report.subscriptions_created == 4
        assert count_audience(session, "turkey-unpacked") == 2
        assert count_audience(session, "climate-weekly") == 2
        lucas = find_subscriber(session, "lucas@example.org")
        assert lucas is not None and lucas.name == "Moreau, Lucas" and lucas.locale == "fr"
        detail = session.exec(
            select(ConsentEvent.detail).where(ConsentEvent.email == "ayse@example.com")
        ).one()
        assert detail == "people.csv:2"
        assert "3 new subscribers" in report.summary() and "7 bad lines" in report.summary()


def test_reimport_changes_nothing_and_never_resubscribes(any_engine: Engine) -> None:
    with Session(any_engine) as session:
        first = run(session, SAMPLE.read_text(encoding="utf-8"))
        session.commit()
        assert first.ok and first.subscriptions_created == 29 and first.subscribers_created == 25
        goktug = find_subscriber(session, "goktug.erdem@example.org")
        zoe = find_subscriber(session, "zoe.marchetti@example.net")
        assert goktug and goktug.id and zoe and zoe.id
        unsubscribe(session, goktug.id, "climate-weekly", now=LATER, method="one-click")
        unsubscribe_all(session, zoe.id, now=LATER, method="preferences")
        suppress(session, "jose.alvarez@example.com", "hard_bounce", now=LATER, source="sendgrid")
        session.commit()
        events_before = session.exec(select(func.count()).select_from(ConsentEvent)).one()

        again = run(session, SAMPLE.read_text(encoding="utf-8"), now=LATER)
        session.commit()
        assert again.ok
        assert (again.subscribers_created, again.subscriptions_created) == (0, 0)
        assert again.already_subscribed == 26
        skipped = sorted((s.line, s.email, s.newsletter, s.reason) for s in again.skipped)
        assert skipped == [
            (3, "goktug.erdem@example.org", "climate-weekly", "unsubscribed on 2026-11-26"),
            (4, "zoe.marchetti@example.net", None, "suppressed (unsubscribed_all)"),
            (5, "jose.alvarez@example.com", None, "suppressed (hard_bounce)"),
        ]
        assert subscriptions_of(session, goktug.id)["climate-weekly"].status == "unsubscribed"
        assert subscriptions_of(session, goktug.id)["turkey-unpacked"].status == "active"
        assert session.exec(select(func.count()).select_from(ConsentEvent)).one() == events_before
        assert session.exec(select(func.count()).select_from(Subscription)).one() == 29


def test_reimport_updates_profiles_but_not_subscriptions(any_engine: Engine) -> None:
    with Session(any_engine) as session:
        run(session, "email,name,newsletters\nmaya@example.net,Maya,climate-weekly\n")
        report = run(
            session,
            "email,name,timezone\nmaya@example.net,Maya Chen,America/Los_Angeles\n",
            default_newsletter="climate-weekly",
        )
        session.commit()
        assert report.profiles_updated == 1 and report.already_subscribed == 1
        maya = find_subscriber(session, "maya@example.net")
        assert maya and (maya.name, maya.timezone) == ("Maya Chen", "America/Los_Angeles")
        # An empty cell keeps what is stored.
        report = run(session, "email,name,newsletters\nmaya@example.net,,climate-weekly\n")
        assert report.profiles_updated == 0


def test_default_newsletter_duplicates_and_large_chunks(any_engine: Engine) -> None:
    lines = ["email"] + [f"reader{i}@example.com" for i in range(2500)] + ["READER7@example.com"]
    with Session(any_engine) as session:
        report = run(session, "\n".join(lines) + "\n", default_newsletter="climate-weekly")
        session.commit()
        assert report.ok and report.rows == 2501
        # READER7 is reader7's mailbox: one subscriber, already subscribed by its earlier line.
        assert report.subscribers_created == 2500 and report.already_subscribed == 1
        assert count_audience(session, "climate-weekly") == 2500
        dup = run(
            session,
            "email\nreader1@example.com\nreader1@example.com\n",
            default_newsletter="climate-weekly",
        )
        assert dup.already_subscribed == 2 and dup.subscriptions_created == 0


def test_file_level_problems(any_engine: Engine) -> None:
    with Session(any_engine) as session:
        assert [str(e) for e in run(session, "").errors] == [
            "line 1: header: the file is empty (expected a header line)"
        ]
        no_email = run(session, "name,newsletters\nAyşe,climate-weekly\n")
        assert no_email.errors[0].field == "email" and "'name'" in no_email.errors[0].reason
        bom = run(session, "\ufeffemail,newsletters\nbom@example.com,climate-weekly\n")
        assert bom.ok and bom.subscriptions_created == 1
        twice = run(session, "email,mail\na@example.com,b@example.com\n")
        assert twice.errors[0].field == "header"


def test_export_round_trips_and_leaves_out_the_unmailable(
    any_engine: Engine, tmp_path: Path
) -> None:
    text = (
        "email,name,newsletters,timezone,locale\n"
        "ayse@example.com,Ayşe,turkey-unpacked;climate-weekly,Europe/Istanbul,tr\n"
        '=cmd@example.com,=HYPERLINK("http://evil"),climate-weekly,,\n'
        "gone@example.com,Gone,climate-weekly,,\n"
        "left@example.com,Left,climate-weekly,,\n"
    )
    with Session(any_engine) as session:
        run(session, text)
        suppress(session, "gone@example.com", "complaint", now=LATER, source="sendgrid")
        left = find_subscriber(session, "left@example.com")
        assert left and left.id
        unsubscribe(session, left.id, "climate-weekly", now=LATER, method="link")
        session.commit()
        out = io.StringIO()
        assert export_csv(session, out) == 2
        exported = out.getvalue()
        assert exported.splitlines() == [
            "email,name,newsletters,timezone,locale",
            "ayse@example.com,Ayşe,climate-weekly;turkey-unpacked,Europe/Istanbul,tr",
            '\'=cmd@example.com,"\'=HYPERLINK(""http://evil"")",climate-weekly,,',
        ]
        only = io.StringIO()
        assert export_csv(session, only, newsletter="turkey-unpacked") == 1

    # The export imports back into an empty database unchanged.
    with Session(any_engine) as session:
        session.exec(select(Subscriber)).all()
    from digest.storage.db import make_engine, upgrade

    fresh = make_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    upgrade(fresh)
    with Session(fresh) as session:
        report = run(session, exported)
        session.commit()
        assert report.ok and report.subscriptions_created == 3
        out2 = io.StringIO()
        export_csv(session, out2)
        assert out2.getvalue() == exported
        odd = find_subscriber(session, "=cmd@example.com")
        assert odd and odd.name == '=HYPERLINK("http://evil")'
    fresh.dispose()


def test_big_import_leaves_planner_statistics_behind(
    pg_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without statistics PostgreSQL plans IN-list lookups as full scans (see bulk.py)."""
    monkeypatch.setattr(csv_io, "ANALYZE_AFTER", 3)
    lines = ["email"] + [f"stat{i}@example.com" for i in range(5)]
    with Session(pg_engine) as session:
        run(session, "\n".join(lines) + "\n", default_newsletter="climate-weekly")
        session.commit()
        reltuples = (
            session.connection()
            .execute(
                text(
                    "SELECT reltuples FROM pg_class WHERE relname = 'subscription' AND relnamespace"
                    " = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())"
                )
            )
            .scalar_one()
        )
        assert reltuples == 5
