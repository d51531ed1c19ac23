"""Database engine, sessions and schema migrations (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy.engine import make_url
from sqlmodel import Session, create_engine

from digest import paths

if TYPE_CHECKING:  # alembic is imported by the functions that migrate: a tick never needs it
    from alembic.config import Config as AlembicConfig

# What the hot paths of sending execute Core statements on: a Session anywhere, or a bare
# Connection from `engine.begin()` where the ORM session's per-transaction cost shows (the
# sender opens three transactions per batch).
Db = Session | Connection


def driver_rows(db: Db, statement: Any) -> list[Any]:
    """The rows of a Core `statement` as the driver's own tuples, in the transaction of `db`.

    For the hot paths that read thousands of plain values (ids, strings) per statement: building
    SQLAlchemy rows for them cost more than the database's work. Parameters go to the driver as
    given (no type conversion): plain ids and strings.
    """
    connection = db.connection() if isinstance(db, Session) else db
    compiled = statement.compile(
        dialect=connection.dialect, compile_kwargs={"render_postcompile": True}
    )
    params: Any = compiled.params
    if compiled.positiontup is not None:
        params = [params[name] for name in compiled.positiontup]
    cursor = connection.connection.cursor()
    try:
        cursor.execute(str(compiled), params)
        return list(cursor.fetchall())
    finally:
        cursor.close()


def make_engine(url: str, *, sqlite_cache_kib: int | None = None, **kwargs: Any) -> Engine:
    """An engine configured for the backend: WAL, foreign keys and a busy timeout on SQLite;
    `sqlite_cache_kib`, each SQLite connection's page cache (SQLite's default is 2,000 KiB)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        if sqlite_cache_kib is not None:
            event.listen(engine, "connect", _sqlite_cache(sqlite_cache_kib))
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def schema_missing(url: str, engine: Engine | None = None) -> str | None:
    """Why the database at `url` cannot be used yet (no file, no schema), or None. Checks
    without creating anything: a SQLite file that does not exist is not made by asking."""
    parsed = make_url(url)
    file = parsed.database if parsed.get_backend_name() == "sqlite" else None
    if file not in (None, "", ":memory:") and not Path(str(file)).is_file():
        return f"the database {parsed.database} does not exist yet"
    from sqlalchemy import inspect

    engine = engine or make_engine(url)
    if not inspect(engine).has_table("alembic_version"):
        return "the database has no digest schema yet"
    return None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    # Fold the log into the database every 20,000 pages (80 MB), not 1,000: a personal freeze
    # writes its readers' rows at scattered places of the delivery index, each commit logs
    # ~1,000 pages, and a checkpoint after every commit copied them all again (a scratch fill of
    # 1M such rows: 10.8 -> 9.2 s; the freezing process 17.8-20.9 -> 17.3 CPU-s in bench_personal).
    cursor.execute("PRAGMA wal_autocheckpoint=20000")
    cursor.close()


def _sqlite_cache(kib: int) -> Callable[[Any, Any], None]:
    def set_cache(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA cache_size=-{int(kib)}")  # negative: KiB, not pages
        cursor.close()

    return set_cache


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def alembic_config(engine: Engine) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(paths.migrations_dir()))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine) -> tuple[str | None, str | None]:
    """Create or migrate the schema to the newest revision; idempotent. Returns (before, after)."""
    from alembic import command

    before = current_revision(engine)
    command.upgrade(alembic_config(engine), "head")
    return before, current_revision(engine)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision(engine: Engine) -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
