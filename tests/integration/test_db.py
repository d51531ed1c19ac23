"""The schema: migrations create it on both databases, idempotently, and match the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect
from sqlmodel import SQLModel
from typer.testing import CliRunner

import digest.storage.access
import digest.storage.models
import subscribers.models
from digest.cli import app as cli_app
from digest.storage.db import current_revision, head_revision, upgrade


def test_upgrade_creates_every_table_and_is_idempotent(any_engine: Engine) -> None:
    assert digest.storage.models and digest.storage.access and subscribers.models
    before, after = upgrade(any_engine)  # the fixture already migrated: nothing to do
    assert before == after == head_revision(any_engine)
    tables = set(inspect(any_engine).get_table_names())
    assert set(SQLModel.metadata.tables) <= tables


def test_migrations_match_the_models(any_engine: Engine) -> None:
    """Fails when a model changed without its migration (add the next revision)."""
    with any_engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, SQLModel.metadata)
    assert differences == []


def test_cli_db_upgrade_on_a_fresh_file(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'sub' / 'fresh.db'}"
    monkeypatch.setenv("DIGEST_DATABASE_URL", url)
    runner = CliRunner()
    first = runner.invoke(cli_app, ["db", "upgrade"])
    assert first.exit_code == 0, first.output
    assert "migrated from empty" in first.output
    second = runner.invoke(cli_app, ["db", "upgrade"])
    assert second.exit_code == 0 and "up to date" in second.output
    from digest.storage.db import make_engine

    engine = make_engine(url)
    assert current_revision(engine) == head_revision(engine)


def test_postgresql_keeps_planned_batch_ids_uncompressed(pg_engine: Engine) -> None:
    """Migration 0014: `send_batch.members` is rewritten on every append of a personal freeze;
    compressed (the default) each append paid for compressing it again."""
    from sqlalchemy import text

    with pg_engine.connect() as connection:
        storage = connection.execute(
            text(
                "SELECT attstorage FROM pg_attribute"
                " WHERE attrelid = 'send_batch'::regclass AND attname = 'members'"
            )
        ).scalar()
    assert storage == "e"  # EXTERNAL: out of line, not compressed


def test_sqlite_connections_log_ahead_and_checkpoint_in_large_steps(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Every connection of a SQLite engine: WAL (readers never block the writer), NORMAL sync,
    and a checkpoint every 20,000 pages (a personal freeze's scattered writes, see db.py)."""
    from sqlalchemy import text

    from digest.storage.db import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'pragmas.db'}")
    try:
        with engine.connect() as connection:
            read = {
                name: connection.execute(text(f"PRAGMA {name}")).scalar()
                for name in ("journal_mode", "synchronous", "wal_autocheckpoint", "foreign_keys")
            }
    finally:
        engine.dispose()
    assert read == {"journal_mode": "wal", "synchronous": 1, "wal_autocheckpoint": 20000,
                    "foreign_keys": 1}  # fmt: skip


def test_a_sqlite_engine_can_be_given_a_larger_page_cache(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The freezing process's engine (digest.sending.freeze_process): every connection of it
    gets the cache asked for; other engines keep SQLite's default."""
    from sqlalchemy import text

    from digest.sending.freeze_process import SQLITE_CACHE_KIB
    from digest.storage.db import make_engine

    url = f"sqlite:///{tmp_path / 'cache.db'}"
    sizes = []
    for engine in (make_engine(url, sqlite_cache_kib=SQLITE_CACHE_KIB), make_engine(url)):
        try:
            with engine.connect() as one, engine.connect() as two:
                sizes.append([c.execute(text("PRAGMA cache_size")).scalar() for c in (one, two)])
        finally:
            engine.dispose()
    assert sizes == [[-SQLITE_CACHE_KIB, -SQLITE_CACHE_KIB], [-2000, -2000]]
