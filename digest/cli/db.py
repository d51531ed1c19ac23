"""`digest db …`: schema management."""

from __future__ import annotations

import typer

from digest.cli.common import console, get_app

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Create the schema or migrate it to the newest version (safe to run again)."""
    from digest.storage.db import upgrade

    app = get_app(ctx, schema=False)
    before, after = upgrade(app.engine)
    if before == after:
        console.print(f"Database is up to date (revision {after}).")
    else:
        console.print(f"Database migrated from {before or 'empty'} to revision {after}.")


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
