"""Set-based SQL for large batches on SQLite and PostgreSQL: inserts and id lookups.

Joining is idempotent and may race (two imports, a form post during an import): inserting
"unless it already exists" (ON CONFLICT DO NOTHING) lets the database settle the race instead of
failing the batch.

A CSV import writes three rows per line, and SQLAlchemy's executemany spent most of the import's
time processing parameters row by row. Here the statement is compiled once and each distinct
value converted once (a chunk shares one timestamp). SQLite then gets the driver's executemany
of plain tuples; PostgreSQL gets one `INSERT … SELECT FROM unnest(arrays)` per chunk, a single
round trip instead of one statement per row. Likewise `IN (…5000 values…)` becomes
`IN (SELECT unnest(array))` on PostgreSQL and `IN (SELECT value FROM json_each(json))` on SQLite:
one parameter to send and plan instead of thousands.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, String, Table, bindparam, func, literal_column, select
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
    names = list(rows[0])
    columns = _converted_columns(table, names, rows, dialect)
    if dialect.name == "postgresql":
        return _insert_unnest(connection, table, columns, conflict)
    if dialect.name != "sqlite":
        raise NotImplementedError(f"database {dialect.name!r} is not supported")
    statement: Any = sqlite.insert(table)
    if conflict is not None:
        statement = statement.on_conflict_do_nothing(index_elements=conflict)
    compiled = statement.compile(dialect=dialect, column_keys=names)
    order = list(compiled.positiontup or names)
    params = list(zip(*(columns[name] for name in order), strict=True))
    result = connection.exec_driver_sql(compiled.string, params if len(params) > 1 else params[0])
    return max(result.rowcount, 0)


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
    table: Table, names: list[str], rows: Sequence[dict[str, Any]], dialect: Dialect
) -> dict[str, list[Any]]:
    """Column name → its values, each converted by the column type's bind processor."""
    columns: dict[str, list[Any]] = {}
    for name in names:
        values = [row[name] for row in rows]
        process = table.c[name].type._cached_bind_processor(dialect)
        columns[name] = values if process is None else list(map(_memoized(process), values))
    return columns


def _memoized(process: Callable[[Any], Any]) -> Callable[[Any], Any]:
    seen: dict[Any, Any] = {}

    def convert(value: Any) -> Any:
        if value is None:
            return None
        try:
            return seen[value]
        except KeyError:
            seen[value] = result = process(value)
            return result
        except TypeError:  # unhashable
            return process(value)

    return convert


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
