"""subscribers.bulk.insert_rows and update_rows store what Core stores, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine, bindparam, insert, text, update

from digest.ingest.upsert import ARTICLE
from subscribers.bulk import insert_rows, update_rows

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
ISTANBUL = timezone(timedelta(hours=3))


def article(guid: str, **values: Any) -> dict[str, Any]:
    row = {
        "source": "s",
        "guid": guid,
        "url": f"https://example.com/{guid.rpartition('-')[2]}",
        "title": "Başlık",
        "title_key": "baslik",
        "summary_html": "<p>x</p>",
        "summary_text": "x",
        "author": None,
        "image_url": None,
        "language": "tr",
        "tags": ["Türkiye", "İstanbul"],
        "published_at": NOW,
        "date_source": "published",
        "first_seen_at": NOW,
        "updated_at": NOW,
        "fingerprint": "f",
    }
    return {**row, **values}


def varied(prefix: str) -> list[dict[str, Any]]:
    """Repeated and distinct values, other time zones, empty and non-ASCII lists."""
    return [
        article(f"{prefix}1"),
        article(f"{prefix}2", published_at=datetime(2026, 11, 25, 9, 30, 1, 5, tzinfo=ISTANBUL)),
        article(f"{prefix}3", tags=[], author="Ayşe", published_at=NOW - timedelta(days=1)),
        article(f"{prefix}4", tags=["Türkiye", "İstanbul"], image_url="https://img/1.jpg"),
    ]


def stored(engine: Engine, prefix: str) -> list[tuple[Any, ...]]:
    """The raw values the driver hands back (no column types), without id and guid."""
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT * FROM article WHERE guid LIKE :p ORDER BY guid"), {"p": f"{prefix}%"}
        )
        keys = list(rows.keys())
        return [
            tuple(v for k, v in zip(keys, row, strict=True) if k not in ("id", "guid"))
            for row in rows
        ]


def test_rows_are_stored_as_core_stores_them(any_engine: Engine) -> None:
    with any_engine.begin() as connection:
        connection.execute(insert(ARTICLE), varied("core-"))
        insert_rows(connection, ARTICLE, varied("bulk-"))
    core = stored(any_engine, "core-")
    assert len(core) == 4
    assert stored(any_engine, "bulk-") == core


def changes(ids: dict[str, int], prefix: str) -> list[dict[str, Any]]:
    """New values for some columns of each row: a later date, other tags, a new time zone."""
    return [
        {
            "id": ids[f"{prefix}{n}"],
            "tags": ["Ekonomi"] if n % 2 else [],
            "updated_at": NOW + timedelta(hours=n),
            "published_at": datetime(2026, 11, 26, n, 0, 0, 999, tzinfo=ISTANBUL),
            "title": f"Yeni {n}",
        }
        for n in range(1, 5)
    ]


def test_updates_are_stored_as_core_stores_them(any_engine: Engine) -> None:
    with any_engine.begin() as connection:
        insert_rows(connection, ARTICLE, varied("core-") + varied("bulk-"))
        ids = dict(connection.execute(text("SELECT guid, id FROM article")).all())
        statement = (
            update(ARTICLE)
            .where(ARTICLE.c.id == bindparam("k_id"))
            .values(tags=bindparam("k_tags"), updated_at=bindparam("k_updated_at"))
            .values(published_at=bindparam("k_published_at"), title=bindparam("k_title"))
        )
        core = [{f"k_{k}": v for k, v in row.items()} for row in changes(ids, "core-")]
        connection.execute(statement, core)
        update_rows(connection, ARTICLE, changes(ids, "bulk-"))
    updated = stored(any_engine, "core-")
    assert [row[2] for row in updated] == ["Yeni 1", "Yeni 2", "Yeni 3", "Yeni 4"]
    assert stored(any_engine, "bulk-") == updated


def test_columns_left_out_get_their_defaults(any_engine: Engine) -> None:
    rows = [article("a"), article("b")]
    for row in rows:
        del row["date_source"], row["fingerprint"]
    with any_engine.begin() as connection:
        insert_rows(connection, ARTICLE, rows)
        found = connection.execute(text("SELECT date_source, fingerprint FROM article")).all()
    assert [tuple(row) for row in found] == [("published", ""), ("published", "")]


def test_a_naive_datetime_is_refused_as_core_refuses_it(any_engine: Engine) -> None:
    naive = article("n", published_at=datetime(2026, 11, 25, 12, 0))
    with pytest.raises(Exception, match="naive datetime"), any_engine.begin() as connection:
        insert_rows(connection, ARTICLE, [naive])


def test_no_rows_is_nothing_to_do(any_engine: Engine) -> None:
    with any_engine.begin() as connection:
        insert_rows(connection, ARTICLE, [])
        assert connection.execute(text("SELECT count(*) FROM article")).scalar() == 0
