"""Bulk writes on SQLite with each distinct value converted once, handed straight to sqlite3.

Through Core, SQLAlchemy converts every bound parameter by its column's type, one call chain
per parameter (aware datetime → naive UTC → text, list → JSON): in an ingest run that was
about 40,000 conversions, a third of the database thread's time, though most values repeat
(the run's `now` on every row, the same few topic reasons). Here each column's own bind
processor converts each distinct value once, so the stored bytes are the ones Core would
write. PostgreSQL keeps the Core path: its driver converts natively, and RETURNING is needed
there anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from functools import lru_cache
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, Dialect, Table, bindparam, insert, update

Convert = Callable[[Any], Any]


def insert_rows(connection: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """INSERT every row (all with the same keys) in one executemany."""
    if rows:
        _execute_many(connection, table, _insert_statement(table, tuple(rows[0])), rows)


def update_rows(
    connection: Connection, table: Table, rows: Sequence[dict[str, Any]], *, key: str = "id"
) -> None:
    """UPDATE each row's columns (all rows with the same keys) where `key` matches."""
    if rows:
        _execute_many(connection, table, _update_statement(table, tuple(rows[0]), key), rows)


@lru_cache(maxsize=64)
def _insert_statement(table: Table, keys: tuple[str, ...]) -> Any:
    return insert(table).values({k: bindparam(f"{_PREFIX}{k}") for k in keys})


@lru_cache(maxsize=64)
def _update_statement(table: Table, keys: tuple[str, ...], key: str) -> Any:
    values: dict[str, Any] = {k: bindparam(f"{_PREFIX}{k}") for k in keys if k != key}
    return update(table).where(table.c[key] == bindparam(f"{_PREFIX}{key}")).values(values)


_PREFIX = "v_"  # parameter names apart from SQLAlchemy's own (an UPDATE binds a column twice)


def _execute_many(
    connection: Connection, table: Table, statement: Any, rows: Sequence[dict[str, Any]]
) -> None:
    direct = _direct(statement, connection.dialect)
    if direct is None:
        named = [{f"{_PREFIX}{k}": v for k, v in row.items()} for row in rows]
        connection.execute(statement, named)
        return
    sql, names = direct
    connection.exec_driver_sql(sql, _bound(connection, table, names, rows))


@lru_cache(maxsize=64)
def _direct(statement: Any, dialect: Dialect) -> tuple[str, tuple[str, ...]] | None:
    """The statement as SQLAlchemy writes it and the columns its parameters bind, in order;
    None where Core must run it: not SQLite, or a column left out is filled by its default."""
    if dialect.name != "sqlite":
        return None
    order = statement.compile(dialect=dialect)
    names = tuple(order.positiontup or ())
    if not all(name.startswith(_PREFIX) for name in names):
        return None
    return order.string, tuple(name.removeprefix(_PREFIX) for name in names)


def _bound(
    connection: Connection, table: Table, names: tuple[str, ...], rows: Sequence[dict[str, Any]]
) -> list[tuple[Any, ...]]:
    """Each row's values in `names` order, converted as their columns' types would."""
    values = itemgetter(*names) if len(names) > 1 else lambda row: (row[names[0]],)
    converters = [(i, _converter(connection, table, name)) for i, name in enumerate(names)]
    converted = [(i, convert) for i, convert in converters if convert is not None]
    bound = []
    for row in rows:
        row_values = list(values(row))
        for i, convert in converted:
            row_values[i] = convert(row_values[i])
        bound.append(tuple(row_values))
    return bound


def _converter(connection: Connection, table: Table, name: str) -> Convert | None:
    """The column's bind processor (None: the driver takes the value as it is), remembering
    its answers for values seen before."""
    dialect = connection.dialect
    process = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
    if process is None:
        return None
    known: dict[Any, Any] = {}

    def convert(value: Any) -> Any:
        key = _key(value)
        if key is None:
            return process(value)
        found = known.get(key, _MISSING)
        if found is _MISSING:
            found = known[key] = process(value)
        return found

    return convert


_MISSING = object()


def _key(value: Any) -> Any:
    """A key that only equal values share: datetimes, and lists of strings (tags, reasons).

    Anything else (numbers: 1 == True == 1.0 would share a key) is converted every time.
    """
    kind = type(value)
    if kind is datetime:
        return value
    if kind is list and all(type(item) is str for item in value):
        return tuple(value)
    return None
