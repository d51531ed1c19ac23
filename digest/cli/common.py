"""Helpers shared by the command modules: the lazily built App, output and errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console

from digest.app import App, Clock


def enum_value(target: str) -> Callable[[str], str]:
    """A typer `parser` accepting the values of the enum `module:Name`, imported when used.

    An enum annotation makes typer import its module for any `digest` command, even `--help`;
    this imports it only when the option is parsed.
    """

    def parse(value: str) -> str:
        import importlib

        module, _, name = target.partition(":")
        choices = [str(m.value) for m in getattr(importlib.import_module(module), name)]
        if value.lower() not in choices:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}")
        return value.lower()

    return parse


console = Console()
err_console = Console(stderr=True)


@dataclass
class LazyApp:
    """Builds the App on first use, so `digest --help` works without a valid config."""

    config_path: str | Path | None
    clock: Clock
    _app: App | None = field(default=None, repr=False)
    checked: bool = False  # the schema was found once: later calls need not ask again

    def get(self) -> App:
        from digest.config import ConfigError

        if self._app is None:
            try:
                self._app = App.from_config(self.config_path, clock=self.clock)
            except ConfigError as exc:
                fail(f"configuration error: {exc}")
        return self._app


def get_app(ctx: typer.Context, *, schema: bool = True) -> App:
    """The App of this command. With `schema` (every command but `db upgrade` and `demo`), a
    database without digest's schema is one line saying what to run, not a traceback."""
    root = ctx.find_root()
    lazy = root.obj
    if isinstance(lazy, App):  # tests may hand an App directly
        return lazy
    if not isinstance(lazy, LazyApp):
        fail("internal error: the CLI context has no application")
    app = lazy.get()
    if schema and not lazy.checked:
        from digest.storage.db import schema_missing

        problem = schema_missing(app.settings.database.url, app.__dict__.get("engine"))
        if problem:
            fail(f"{problem}: run `digest db upgrade` first")
        lazy.checked = True
    return app


def get_signing_app(ctx: typer.Context) -> App:
    """The App of a command that signs links or mails people (serve, send, scheduler,
    run-due): it refuses to run with the development key unless base_url is loopback (asked
    before anything else, the database included)."""
    from digest.config import ConfigError

    app = get_app(ctx, schema=False)
    try:
        app.settings.require_secret_key()
    except ConfigError as exc:
        fail(str(exc))
    return get_app(ctx)


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def print_json(document: Any) -> None:
    """One JSON document on stdout and nothing else (for --json)."""
    sys.stdout.write(json.dumps(document, ensure_ascii=False, default=str, indent=2) + "\n")
