"""Set-based SQL for large batches on SQLite and PostgreSQL: inserts, updates and id lookups.

Joining is idempotent and may race (two imports, a form post during an import): inserting
"unless it already exists" (ON CONFLICT DO NOTHING) lets the database settle the race instead of
failing the batch.

Through Core, SQLAlchemy converts every bound parameter by its column's type, one call chain per
parameter (aware datetime → naive UTC → text, list → JSON): most of a CSV import's time (three
rows per line) and a third of an ingest run's database thread, though most values repeat (a
chunk's one timestamp, the same few topic reasons). Here the statement is compiled once and each
column's own bind processor converts each distinct value once, so the stored bytes are the ones
Core would write; SQLite then gets the driver's executemany of plain tuples. On PostgreSQL,
`bulk_insert` sends one `INSERT … SELECT FROM unnest(arrays)` per chunk, a single round trip
instead of one statement per row, while `insert_rows` and `update_rows` keep Core's executemany
(psycopg converts natively). Likewise `IN (…5000 values…)` becomes `IN (SELECT unnest(array))`
on PostgreSQL and `IN (SELECT value FROM json_each(json))` on SQLite: one parameter to send and
plan instead of thousands.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    ColumnElement,
    String,
    Table,
    bindparam,
    func,
    insert,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect
from sqlmodel import Session


def insert_missing(
    session: Session, model: Any, rows: Sequence[dict[str, Any]], *, conflict: Sequence[str]
) -> int:
    """Insert the rows whose `conflict` columns are not taken yet; returns how many went in."""
    return bulk_insert(session, model, rows, conflict=conflict)


def bulk_insert(
    session: Session,
    model: Any,
    rows: Sequence[dict[str, Any]],
    *,
    conflict: Sequence[str] | None = None,
) -> int:
    """Insert `rows` (all with the same keys) in one statement; returns the rows inserted.

    With `conflict`, rows clashing with an existing unique key are skipped (DO NOTHING).
    """
    if not rows:
        return 0
    connection = session.connection()
    dialect = connection.dialect
    table: Table = model.__table__
    if dialect.name == "postgresql":
        columns = _converted_columns(table, tuple(rows[0]), rows, dialect)
        return _insert_unnest(connection, table, columns, conflict)
    if dialect.name != "sqlite":
        raise NotImplementedError(f"database {dialect.name!r} is not supported")
    keys = None if conflict is None else tuple(conflict)
    return _execute_many(connection, table, _insert_statement(table, tuple(rows[0]), keys), rows)


def insert_rows(connection: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """INSERT every row (all with the same keys) in one executemany."""
    if rows:
        _execute_many(connection, table, _insert_statement(table, tuple(rows[0]), None), rows)


def update_rows(
    connection: Connection, table: Table, rows: Sequence[dict[str, Any]], *, key: str = "id"
) -> None:
    """UPDATE each row's columns (all rows with the same keys) where `key` matches."""
    if rows:
        _execute_many(connection, table, _update_statement(table, tuple(rows[0]), key), rows)


_PREFIX = "v_"  # parameter names apart from SQLAlchemy's own (an UPDATE binds a column twice)


@lru_cache(maxsize=64)
def _insert_statement(table: Table, keys: tuple[str, ...], conflict: tuple[str, ...] | None) -> Any:
    values: dict[str, Any] = {k: bindparam(f"{_PREFIX}{k}") for k in keys}
    if conflict is None:
        return insert(table).values(values)
    return sqlite.insert(table).values(values).on_conflict_do_nothing(index_elements=conflict)


@lru_cache(maxsize=64)
def _update_statement(table: Table, keys: tuple[str, ...], key: str) -> Any:
    values: dict[str, Any] = {k: bindparam(f"{_PREFIX}{k}") for k in keys if k != key}
    return update(table).where(table.c[key] == bindparam(f"{_PREFIX}{key}")).values(values)


def _execute_many(
    connection: Connection, table: Table, statement: Any, rows: Sequence[dict[str, Any]]
) -> int:
    """Run `statement` once per row, converted here on SQLite; returns the rows it changed."""
    dialect = connection.dialect
    direct = _direct(statement, dialect)
    if direct is None:
        named = [{f"{_PREFIX}{k}": v for k, v in row.items()} for row in rows]
        result = connection.execute(statement, named)
    else:
        sql, names = direct
        columns = _converted_columns(table, names, rows, dialect)
        params = list(zip(*(columns[name] for name in names), strict=True))
        result = connection.exec_driver_sql(sql, params)
    return max(result.rowcount, 0)


@lru_cache(maxsize=64)
def _direct(statement: Any, dialect: Dialect) -> tuple[str, tuple[str, ...]] | None:
    """The statement as SQLAlchemy writes it and the columns its parameters bind, in order;
    None where Core must run it: not SQLite, or a column left out is filled by its default."""
    if dialect.name != "sqlite":
        return None
    compiled = statement.compile(dialect=dialect)
    names = tuple(compiled.positiontup or ())
    if not names or not all(name.startswith(_PREFIX) for name in names):
        return None
    return compiled.string, tuple(name.removeprefix(_PREFIX) for name in names)


def _insert_unnest(
    connection: Connection,
    table: Table,
    columns: dict[str, list[Any]],
    conflict: Sequence[str] | None,
) -> int:
    dialect = connection.dialect
    preparer = dialect.identifier_preparer
    names = list(columns)
    targets = ", ".join(preparer.quote(name) for name in names)
    arrays = ", ".join(
        f"%({name})b::{table.c[name].type.compile(dialect=dialect)}[]" for name in names
    )
    # Identifiers come from the table's metadata (table.c[name] refuses others) and are quoted;
    # every value is a bound parameter.
    into = preparer.format_table(table)
    sql = f"INSERT INTO {into} ({targets}) SELECT * FROM unnest({arrays})"  # noqa: S608
    if conflict is not None:
        keys = ", ".join(preparer.quote(name) for name in conflict)
        sql += f" ON CONFLICT ({keys}) DO NOTHING"
    result = connection.exec_driver_sql(sql, columns)
    return max(result.rowcount, 0)


def _converted_columns(
    table: Table, names: Sequence[str], rows: Sequence[dict[str, Any]], dialect: Dialect
) -> dict[str, list[Any]]:
    """Column name → its values, each converted by the column type's bind processor as Core
    would (a type without one leaves them to the driver as they are)."""
    columns: dict[str, list[Any]] = {}
    for name in names:
        values = [row[name] for row in rows]
        process = table.c[name].type._cached_bind_processor(dialect)
        columns[name] = values if process is None else list(map(_memoized(process), values))
    return columns


def _memoized(process: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`process`, remembering its answers for values seen before (see `_key`)."""
    known: dict[Any, Any] = {}

    def convert(value: Any) -> Any:
        key = _key(value)
        if key is _UNIQUE:
            return process(value)
        found = known.get(key, _UNIQUE)
        if found is _UNIQUE:
            found = known[key] = process(value)
        return found

    return convert


_UNIQUE = object()


def _key(value: Any) -> Any:
    """A key only values converting alike share, or _UNIQUE: convert it every time.

    None, strings, lists of strings (tags, reasons), and datetimes with their tzinfo (the same
    instant in another zone is equal, but may convert to another wall time). Not numbers:
    1 == True == 1.0 would share a key.
    """
    kind = type(value)
    if kind is datetime:
        return (value, value.tzinfo)
    if value is None or kind is str or kind is bytes:
        return value
    if kind is list and all(type(item) is str for item in value):
        return tuple(value)
    return _UNIQUE


def among(column: Any, values: Sequence[Any], dialect: Dialect) -> ColumnElement[bool]:
    """`column IN values`, sent as a single parameter (strings or integers)."""
    if dialect.name == "postgresql":
        # `IN (SELECT unnest(array))`, not `= ANY(array)`: once psycopg prepares the statement,
        # PostgreSQL may choose a generic plan that scans the table and searches the array
        # linearly for every row (minutes for 5,000 ids); a semi-join hashes or probes instead.
        array = bindparam(None, list(values), type_=postgresql.ARRAY(column.type))
        return column.in_(select(func.unnest(array)).scalar_subquery())  # type: ignore[no-any-return]
    # SQLite: one JSON parameter read by json_each, still probed through the column's index,
    # instead of thousands of bound parameters for SQLAlchemy to process.
    values_json = bindparam(None, json.dumps(list(values)), type_=String())
    rows: Any = select(literal_column("value")).select_from(func.json_each(values_json))
    return column.in_(rows.scalar_subquery())  # type: ignore[no-any-return]


def refresh_statistics(session: Session, models: Sequence[Any]) -> None:
    """ANALYZE these tables on PostgreSQL (within the transaction: it counts its own rows).

    After a bulk load the planner has no statistics until autovacuum's next pass; meanwhile it
    guesses that `IN (…1000 ids…)` matches the whole table and plans sequential scans, which
    made the first send after a 1M import check each batch in seconds instead of milliseconds.
    SQLite plans these lookups by index without statistics, so nothing is done there.
    """
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        return
    preparer = connection.dialect.identifier_preparer
    tables = ", ".join(preparer.format_table(model.__table__) for model in models)
    connection.exec_driver_sql(f"ANALYZE {tables}")
