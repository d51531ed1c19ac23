"""Bounces: `digest bounces fetch` reads the SMTP bounce mailbox once (`digest.tracking`)."""

from __future__ import annotations

from typing import Annotated

import typer

from digest.cli.common import console, fail, get_app, print_json

bounces_app = typer.Typer(help="Bounces and complaints of mail sent by SMTP.", no_args_is_help=True)


@bounces_app.command("fetch")
def fetch_command(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Read bounces.mailbox: suppress hard bounces and complaints, count soft bounces."""
    from digest.tracking.fetch import fetch_bounces
    from digest.tracking.mailbox import MailboxError

    try:
        report = fetch_bounces(get_app(ctx))
    except MailboxError as exc:
        fail(f"bounces fetch: {exc}")
    if as_json:
        print_json(report.as_json())
        return
    console.print(
        f"read {report.read}: {report.hard} hard, {report.soft} soft, "
        f"{report.complaints} complaints, {report.delivered} delivered; "
        f"{report.suppressed} suppressed; left in the mailbox: {report.forged} not signed by us, "
        f"{report.unknown} not bounces; {report.duplicates} seen before"
    )
    for error in report.errors:
        console.print(f"[red]{error}[/]")
    if report.errors:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(bounces_app, name="bounces")
