"""Retention: `digest housekeeping` (what may go, goes) and `digest subscribers consent`
(what always stays: an address's consent events, the legal record).

The consent command sits here, beside the deletion it survives, and joins the `subscribers`
group at registration (`register` runs after `people` made the group).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from digest.cli.common import console, get_app, print_json

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]


def housekeeping_command(
    ctx: typer.Context,
    as_json: JsonOption = False,
    chunk: Annotated[
        int, typer.Option(help="Rows deleted per transaction.", min=1, max=100_000)
    ] = 5000,
) -> None:
    """Delete old deliveries (retention.deliveries, their counts kept), old webhook events,
    expired studio sessions, sign-in links and form counters; report what went."""
    from digest.ops.retention import run_now

    report = run_now(get_app(ctx), chunk=chunk)
    if as_json:
        print_json(report.as_json())
        return
    kept = report.deliveries_before
    console.print(
        f"Housekeeping at {report.now.isoformat()}: {report.summary()} "
        f"in {report.transactions} transactions.",
        highlight=False,
        soft_wrap=True,
    )
    console.print(
        f"Deliveries of issues sent before {kept.isoformat()} are deleted"
        if kept
        else "Deliveries are kept forever (retention.deliveries is not set)",
        highlight=False,
        soft_wrap=True,
    )
    if report.counts_stored:
        ids = ", ".join(f"#{i}" for i in report.counts_stored)
        console.print(f"Counts stored first for {ids}", highlight=False, soft_wrap=True)


def consent_command(
    ctx: typer.Context,
    email: Annotated[str, typer.Argument(help="The address whose consent record to print.")],
    as_json: JsonOption = False,
) -> None:
    """Every consent event of an address (kept by retention): action, newsletter, method,
    when, IP, user agent, detail, issue."""
    from digest.ops.retention import consent_record

    with get_app(ctx).session() as session:
        record = consent_record(session, email)
    if as_json:
        print_json(record)
        return
    address = escape(record["address"])
    if not record["events"]:
        console.print(f"no consent events for {address}", highlight=False, soft_wrap=True)
        return
    # One line per event, nothing cut: a record handed to a regulator must not be truncated.
    console.print(f"consent events of {address}:", highlight=False, soft_wrap=True)
    for event in record["events"]:
        parts = [
            f"{event['at']:%Y-%m-%d %H:%M:%S}",
            event["action"],
            event["newsletter"] or "(all newsletters)",
            f"by {event['method']}",
            *(f"{label} {event[key]}" for key, label in _EXTRA if event[key] is not None),
        ]
        console.print(escape(" ".join(str(p) for p in parts)), highlight=False, soft_wrap=True)


_EXTRA = (("ip", "ip"), ("user_agent", "user agent"), ("detail", "detail"), ("issue_id", "issue"))


def register(app: typer.Typer) -> None:
    from digest.cli.people import subscribers_app

    app.command("housekeeping")(housekeeping_command)
    subscribers_app.command("consent")(consent_command)
