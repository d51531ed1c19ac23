"""Limits on public forms, counted in the database so every `digest serve` process shares them.

Two shapes, each one statement (an upsert: no read-then-write race between processes):
- `allow`: at most `limit` uses of a key per fixed window (per client, per account);
- `cooldown`: a key may fire again only `period` after it last did (one confirmation email per
  address per cooldown, however often the form is posted).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, case, literal
from sqlalchemy.dialects import postgresql, sqlite

from digest.storage.access import Throttle

_T = Throttle.__table__  # type: ignore[attr-defined]


def allow(engine: Engine, key: str, *, limit: int, window: timedelta, now: datetime) -> bool:
    """Count one use of `key`; False when it was already used `limit` times this window."""
    start = _window_start(now, window)
    insert = _insert(engine).values(key=key[:200], window_start=start, count=1)
    same_window = _T.c.window_start == start
    statement = insert.on_conflict_do_update(
        index_elements=[_T.c.key],
        set_={
            "count": case((same_window, _T.c.count + 1), else_=literal(1)),
            "window_start": start,
        },
    ).returning(_T.c.count)
    with engine.begin() as connection:
        count = connection.execute(statement).scalar_one()
    return int(count) <= limit


def cooldown(engine: Engine, key: str, *, period: timedelta, now: datetime) -> bool:
    """True, and the clock restarts, if `key` last fired at least `period` ago (or never)."""
    insert = _insert(engine).values(key=key[:200], window_start=now, count=1)
    statement = insert.on_conflict_do_update(
        index_elements=[_T.c.key],
        set_={"window_start": now, "count": _T.c.count + 1},
        where=_T.c.window_start <= now - period,
    ).returning(_T.c.key)
    with engine.begin() as connection:
        return connection.execute(statement).first() is not None


def _insert(engine: Engine):  # type: ignore[no-untyped-def]
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    return dialect.insert(_T)


def _window_start(now: datetime, window: timedelta) -> datetime:
    seconds = int(window.total_seconds())
    epoch = int(now.timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, UTC)
