"""`digest send` and `digest deliveries`: send the current issue, resumably, and count outcomes."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from digest.cli.common import console, err_console, fail, get_app, get_signing_app, print_json

if TYPE_CHECKING:  # the rest is imported where used: `digest --help` loads none of it
    from digest.app import App
    from digest.sending.send import SendReport
    from digest.storage.models import Issue

EXIT_ATTENTION = 2  # finished, but some recipients failed or are unknown


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f}/s" if speed else "—/s", style="progress.data.speed")


def _known(app: App, slug: str) -> None:
    from digest.config import ConfigError

    try:
        app.settings.newsletter(slug)
    except ConfigError as exc:
        fail(exc.reason)


def send(
    ctx: typer.Context,
    slug: Annotated[str, typer.Argument(help="Newsletter slug.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be sent.")] = False,
    to: Annotated[
        str | None,
        typer.Option("--to", help="Send one test copy to this address instead ('[TEST] ')."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Send to at most N recipients now.")
    ] = None,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Send again to recipients that failed.")
    ] = False,
    retry_unknown: Annotated[
        bool,
        typer.Option(
            "--retry-unknown",
            help="Send again to recipients whose batch may or may not have gone out.",
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Send despite lint errors or an oversized HTML part.")
    ] = False,
    ahead: Annotated[
        bool,
        typer.Option(
            "--ahead", help="Send the next issue now, before its scheduled time (see README)."
        ),
    ] = False,
) -> None:
    """Send the current period's issue (built first when needed), the one the studio shows.
    Run again to resume; once everything is final it says there is nothing left. Between two
    scheduled times the next issue goes out only with --ahead. Exit 2 when some recipients
    failed or are unknown."""
    from digest.issues import assemble, timeline
    from digest.sending.send import SendRefused
    from digest.storage.models import IssueStatus
    from digest.transports import TransportError

    app = get_signing_app(ctx)
    _known(app, slug)
    target = timeline.send_target(app, slug)
    when = _local(app, slug, target.period)
    if target.ahead and not (ahead or dry_run or to):
        fail(
            f"{slug}: the next issue is for {when}, ahead of now; the scheduler sends it then. "
            "Send it now with --ahead, or see what would go with --dry-run."
        )
    issue = assemble.build_issue(app, slug, target.period)
    if issue.status == IssueStatus.SKIPPED:
        console.print(f"{slug}: nothing to send, issue {issue.id} was skipped: {issue.skip_reason}")
        return
    try:
        if to:
            _send_test(app, issue, to)
            return
        report = _send_with_progress(app, issue, dry_run, limit, retry_failed, retry_unknown, force)
    except (SendRefused, TransportError) as exc:
        fail(str(exc))
    _summary(slug, issue, report, period=when, ahead=target.ahead)
    if report.failed or report.unknown:
        raise typer.Exit(EXIT_ATTENTION)


def _send_test(app: App, issue: Issue, to: str) -> None:
    from digest.sending.send import send_test

    result = send_test(app, issue.id or 0, to)
    if not result.accepted:
        fail(f"test copy to {to} {result.outcome}: {result.error}")
    console.print(f"test copy of issue {issue.id} sent to {result.email} via {_transport(app)}")


def _transport(app: App) -> str:
    return str(app.settings.delivery.transport)


def _send_with_progress(
    app: App,
    issue: Issue,
    dry_run: bool,
    limit: int | None,
    retry_failed: bool,
    retry_unknown: bool,
    force: bool,
) -> SendReport:
    from digest.sending.send import send_issue

    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task(f"sending issue {issue.id}", total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return send_issue(
            app,
            issue.id or 0,
            dry_run=dry_run,
            limit=limit,
            retry_failed=retry_failed,
            retry_unknown=retry_unknown,
            force=force,
            progress=advance,
        )


def _local(app: App, slug: str, period: datetime) -> str:
    zone = app.settings.newsletter_timezone(app.settings.newsletter(slug))
    return period.astimezone(zone).strftime("%a %d %b %Y %H:%M %Z")


def _summary(slug: str, issue: Issue, report: SendReport, *, period: str, ahead: bool) -> None:
    where = f"{slug}: issue {issue.id} for {period}"
    if report.dry_run:
        if report.already_done:
            console.print(f"{where} is {report.issue_status}: nothing left to send")
        else:
            early = " (ahead of its scheduled time: needs --ahead)" if ahead else ""
            console.print(
                f"{where} is {report.issue_status}: would send to {report.pending:,} "
                f"recipients via {report.transport}{early}"
            )
        return
    if report.found_unknown:
        console.print(
            f"[yellow]{len(report.found_unknown)} batch(es) were in flight when their sender "
            "stopped: reported unknown, resend with --retry-unknown[/]"
        )
    if report.already_done and not report.requeued:
        console.print(f"{where} is {report.issue_status}: nothing left to send")
    else:
        console.print(
            f"{where}: {report.processed:,} recipients in {report.batches} batches via "
            f"{report.transport} in {report.seconds:.1f} s ({report.rate:,.0f}/s)"
        )
    console.print(
        f"  accepted {report.accepted:,} · failed {report.failed:,} · skipped "
        f"{report.skipped:,} · unknown {report.unknown:,} · pending {report.pending:,}"
        + (f" · in flight elsewhere {report.sending:,}" if report.sending else "")
        + f" → issue {report.issue_status}"
    )
    for error in report.errors:
        console.print(f"  [red]provider said:[/] {error}", highlight=False)
    if report.failed:
        console.print("  resend the failed with: digest send " + slug + " --retry-failed")
    if report.unknown:
        console.print("  resend the unknown with: digest send " + slug + " --retry-unknown")


def deliveries(
    ctx: typer.Context,
    slug: Annotated[str, typer.Argument(help="Newsletter slug.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    issue_id: Annotated[
        int | None, typer.Option("--issue", help="Issue id (default: the latest issue).")
    ] = None,
) -> None:
    """Delivery counts per state for the newsletter's latest issue (or --issue), and how many
    recipients left unknown provider events have since proved sent."""
    from digest.issues import assemble
    from digest.sending import snapshot
    from digest.sending.counts import SEND_STATES
    from digest.sending.send import unfrozen
    from digest.storage.models import Issue

    app = get_app(ctx)
    _known(app, slug)
    with app.session() as session:
        if issue_id is None:
            issue = assemble.latest_issue(session, slug)
        else:
            issue = session.get(Issue, issue_id)
            if issue is not None and issue.newsletter != slug:
                issue = None
        if issue is None:
            fail(f"no issue {issue_id} for {slug!r}" if issue_id else f"{slug} has no issue yet")
        counts = snapshot.delivery_counts(session, issue.id or 0)  # stored once sent
        settled = snapshot.settled(session, [issue.id or 0]).get(issue.id or 0, 0)
        to_freeze = unfrozen(session, issue.id or 0, slug, app.settings.replaced_by(slug))
    document: dict[str, Any] = {
        "newsletter": slug,
        "issue_id": issue.id,
        "period": issue.period,
        "status": issue.status,
        "total": sum(counts.values()),
        "counts": counts,
        "not_yet_frozen": to_freeze,  # recipients the freeze of a send in progress has not reached
        # recipients whose batch was left unknown, proved sent since by a provider event
        # (delivered, processed, bounced…): --retry-unknown no longer resends them
        "settled_by_events": settled,
    }
    if as_json:
        print_json(document)
        return
    console.print(f"{slug}: issue {issue.id} ({issue.period}) is {issue.status}")
    order = [*SEND_STATES, *sorted(set(counts) - set(SEND_STATES))]
    for state in order:
        console.print(f"  {state:<10} {counts.get(state, 0):>10,}")
    console.print(f"  {'total':<10} {document['total']:>10,}")
    if to_freeze:
        console.print(f"  and {to_freeze:,} more still to be frozen (the send goes on)")
    if settled:
        console.print(
            f"  {settled:,} left unknown were since proved sent by provider events "
            "(--retry-unknown does not resend them)"
        )


def register(app: typer.Typer) -> None:
    app.command("send")(send)
    app.command("deliveries")(deliveries)
