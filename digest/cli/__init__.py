"""The `digest` command line: `digest <noun> <verb>`.

This module holds the root app and global options only; each command area lives in its own
module (`db`, `content`, `issues`, `sending`, `people`, `ops`, `schedule`, `housekeeping`,
`workers`) and registers itself here. The top of the stack: may import any stage; nothing
imports it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer

from digest.app import App, fixed_clock, system_clock
from digest.cli import common

app = typer.Typer(
    name="digest",
    help="Newsletter digests for newsrooms: ingest, assemble, render, send, track.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Plain click help: typer's rich help prints a flag as `--dry-run <bool>`, as if it took a
    # value. (It is also cheaper to import.)
    rich_markup_mode=None,
)


@app.callback()
def _global_options(
    ctx: typer.Context,
    config: Annotated[
        str | None,
        typer.Option(
            "--config", "-c", help="Config file (default: $DIGEST_CONFIG or config/digest.toml)."
        ),
    ] = None,
    now: Annotated[
        str | None,
        typer.Option(help="Pretend the current time is this ISO 8601 moment (simulations)."),
    ] = None,
) -> None:
    clock = system_clock
    if now:
        try:
            clock = fixed_clock(datetime.fromisoformat(now.replace("Z", "+00:00")))
        except ValueError:
            common.fail(f"--now: not an ISO 8601 date-time: {now!r}")
    ctx.obj = common.LazyApp(config_path=config, clock=clock)


def _register() -> None:
    # Imported here: the area modules import helpers from `digest.cli.common`.
    from digest.cli import (
        bounces,
        content,
        db,
        editors,
        housekeeping,
        issues,
        ops,
        people,
        schedule,
        sending,
        workers,
    )

    areas = (db, content, issues, sending, people, editors, ops, schedule, bounces, housekeeping)
    for area in (*areas, workers):
        area.register(app)


_register()


def main() -> None:
    # At exit the interpreter's last cyclic collection walks every object the command loaded
    # (SQLAlchemy, pydantic, the models): about 0.1 s of a 1 s `digest ingest`, spent on memory
    # the process is about to give back anyway. Frozen objects are skipped; atexit handlers
    # registered earlier (logging's flush, multiprocessing's joins) still run after this one.
    import atexit
    import gc

    atexit.register(gc.freeze)
    try:
        app()
    except Exception as exc:
        from digest.config import ConfigError  # not before: `digest --help` never needs it

        if isinstance(exc, ConfigError):
            common.fail(f"configuration error: {exc}")
        raise


__all__ = ["App", "app", "main"]
