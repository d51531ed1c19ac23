"""Alembic environment: runs against the engine digest hands over, or $DIGEST_DATABASE_URL."""

from __future__ import annotations

import os

from alembic import context
from sqlmodel import SQLModel

import digest.storage.access
import digest.storage.engagement
import digest.storage.models
import subscribers.models  # noqa: F401 - registers the tables on SQLModel.metadata
from digest.storage.db import make_engine

target_metadata = SQLModel.metadata
# keep the imports: they register the pipeline tables
assert digest.storage.models and digest.storage.access and digest.storage.engagement


def run_migrations() -> None:
    engine = context.config.attributes.get("engine")
    if engine is None:
        engine = make_engine(os.environ.get("DIGEST_DATABASE_URL", "sqlite:///var/digest.db"))
    with engine.begin() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            compare_type=True,
            # SQLite cannot ALTER most things: batch mode rebuilds the table instead.
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()


run_migrations()
